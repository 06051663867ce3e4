"""LaTeX: booktabs, best value per column in bold, escaping, and a document that a real engine compiles."""

from __future__ import annotations

import re
import shutil

import pytest

from reports.latex import compile_document, escape, tex_engine
from tests.reports import factory as f

GIB = 2**30


def test_booktabs_rules_caption_and_bold_best(built) -> None:
    tex = (built.out / "efficiency.tex").read_text()
    assert tex.count(r"\begin{table}") == 2  # one per device
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in tex
    gpu = tex[tex.index("NVIDIA H100") :]
    modern = built.row(f.MODERN, f.H100)
    # The lowest GPU memory and step time are the modern row's: bold, with the ratio after them.
    assert rf"\textbf{{{modern['memory']['gpu_allocated_peak_bytes'] / GIB:.3f}}}" in gpu
    assert rf"\textbf{{{modern['stages']['step']['median'] * 1e3:.2f}}} (" in gpu
    base_ms = f"{built.row(f.FAITHFUL, f.H100)['stages']['step']['median'] * 1e3:.2f}"
    assert rf"\textbf{{{base_ms}}}" not in gpu
    assert r"$\times$" in gpu and "×" not in tex  # no raw Unicode for pdflatex to choke on


def test_escape() -> None:
    assert escape("a_b & 50% #1 {x} ~ ^ \\") == (
        r"a\_b \& 50\% \#1 \{x\} \textasciitilde{} "
        r"\textasciicircum{} \textbackslash{}"
    )
    assert escape("math → sdpa ±") == r"math $\rightarrow$ sdpa $\pm$"
    assert escape("Café™").isascii()


def test_every_cell_text_is_escaped(built) -> None:
    tex = (built.out / "loo.tex").read_text()
    assert r"sdpa\_flash" in tex and "sdpa_flash" not in re.sub(r"\\label\{[^}]*\}", "", tex)


@pytest.mark.skipif(
    tex_engine() is None, reason="no TeX engine installed (apt-get install texlive-latex-recommended)"
)
def test_report_compiles(built, tmp_path) -> None:
    for name in built.out.glob("*.tex"):
        shutil.copy(name, tmp_path / name.name)
    compile_document(tmp_path / "report.tex")
    assert (tmp_path / "report.pdf").stat().st_size > 1000


@pytest.mark.skipif(tex_engine() is None, reason="no TeX engine installed")
def test_a_broken_document_fails_to_compile(tmp_path) -> None:
    """The compile check can fail: an undefined command is an error, not a warning."""
    (tmp_path / "bad.tex").write_text(
        "\\documentclass{article}\\begin{document}\\nosuchcommand\\end{document}\n"
    )
    with pytest.raises(RuntimeError, match="failed"):
        compile_document(tmp_path / "bad.tex")
