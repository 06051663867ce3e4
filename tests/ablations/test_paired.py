"""Paired AUROC comparison (ablations/paired.py) against scikit-learn and against what pairing is for."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ablations.bootstrap import BootstrapSpec
from ablations.paired import load_scores, paired_auroc, save_scores
from ablations.zeroshot import ZeroShotScores

CLASSES = ["Emphysema", "Cardiomegaly", "Pleural effusion", "Atelectasis"]


def _pair(rng: np.random.Generator, n: int = 300, gain: float = 0.0, noise: float = 0.3):
    """Two models on the same n volumes: a shared per-volume difficulty (what makes pairing matter),
    the candidate separating positives by `gain` more, each with its own noise."""
    labels = (rng.random((n, len(CLASSES))) < 0.3).astype(int)
    labels[:, 0] = 0  # a class with no positives: undefined AUROC, left out of the macro mean
    shared = rng.normal(0, 1.0, (n, len(CLASSES)))
    base = 0.5 * labels + shared + rng.normal(0, noise, shared.shape)
    cand = (0.5 + gain) * labels + shared + rng.normal(0, noise, shared.shape)
    names = [f"valid_{i // 2}_a_{i % 2 + 1}" for i in range(n)]

    def scores(s):
        return ZeroShotScores(1 / (1 + np.exp(-s)), labels, list(names), list(CLASSES))

    return scores(cand), scores(base)


def _sk_macro(s: ZeroShotScores) -> float:
    return float(np.mean([roc_auc_score(s.labels[:, i], s.probabilities[:, i]) for i in range(1, len(CLASSES))]))


def test_point_estimates_are_scikit_learns() -> None:
    cand, base = _pair(np.random.default_rng(0), gain=0.3)
    out = paired_auroc(cand, base, spec=BootstrapSpec(n=200))
    assert out["macro_auroc"]["candidate"] == pytest.approx(_sk_macro(cand))
    assert out["macro_auroc"]["baseline"] == pytest.approx(_sk_macro(base))
    assert out["macro_auroc"]["delta"] == pytest.approx(_sk_macro(cand) - _sk_macro(base))
    assert set(out["per_class"]) == set(CLASSES[1:])  # the class without positives is left out
    effusion = out["per_class"]["Pleural effusion"]
    i = CLASSES.index("Pleural effusion")
    assert effusion["delta"] == pytest.approx(roc_auc_score(cand.labels[:, i], cand.probabilities[:, i])
                                              - roc_auc_score(base.labels[:, i], base.probabilities[:, i]))
    assert out["n_eval"] == 300 and out["bootstrap"]["by"] == "volume"


def test_a_model_against_itself_differs_by_exactly_zero() -> None:
    cand, _ = _pair(np.random.default_rng(1))
    out = paired_auroc(cand, cand, spec=BootstrapSpec(n=100))["macro_auroc"]
    assert out["delta"] == 0 and out["ci_low"] == out["ci_high"] == 0 and out["p_value"] == 1.0


def test_pairing_resolves_what_two_separate_intervals_cannot() -> None:
    """A real but small gain: the two models' own intervals overlap, the paired difference's does not."""
    from ablations.protocols import evaluate_protocol

    cand, base = _pair(np.random.default_rng(2), n=500, gain=0.15, noise=0.2)
    spec = BootstrapSpec(n=500)
    out = paired_auroc(cand, base, spec=spec)["macro_auroc"]
    assert 0 < out["ci_low"] < out["delta"] < out["ci_high"] and out["p_value"] < 0.01
    own = [evaluate_protocol("ctclip", s.labels, s.probabilities, CLASSES, None, None, spec)["macro"]["auroc"]
           for s in (cand, base)]
    assert own[0]["ci_low"] < own[1]["ci_high"]  # unpaired, the gain would not be resolved
    assert out["ci_high"] - out["ci_low"] < 0.5 * (own[0]["ci_high"] - own[0]["ci_low"])


def test_false_alarms_stay_near_the_nominal_rate() -> None:
    """Two models with no difference in expectation: p < 0.05 in about 5 % of experiments."""
    rng = np.random.default_rng(3)
    alarms, trials = 0, 60
    for _ in range(trials):
        cand, base = _pair(rng, n=200)
        alarms += paired_auroc(cand, base, spec=BootstrapSpec(n=400))["macro_auroc"]["p_value"] < 0.05
    assert alarms / trials <= 0.15  # Binomial(60, 0.05) exceeds 9 alarms with probability < 0.01


def test_volumes_are_matched_by_name_and_mismatches_refused(tmp_path) -> None:
    cand, base = _pair(np.random.default_rng(4), gain=0.2)
    order = np.random.default_rng(5).permutation(len(base.names))
    shuffled = ZeroShotScores(base.probabilities[order], base.labels[order], [base.names[i] for i in order],
                              base.classes)
    spec = BootstrapSpec(n=50)
    assert paired_auroc(cand, shuffled, spec=spec)["macro_auroc"]["delta"] == pytest.approx(
        paired_auroc(cand, base, spec=spec)["macro_auroc"]["delta"])
    fewer = ZeroShotScores(base.probabilities[1:], base.labels[1:], base.names[1:], base.classes)
    with pytest.raises(ValueError, match="different volumes"):
        paired_auroc(cand, fewer, spec=spec)
    relabelled = ZeroShotScores(base.probabilities, 1 - base.labels, base.names, base.classes)
    with pytest.raises(ValueError, match="labels"):
        paired_auroc(cand, relabelled, spec=spec)
    # Resampling by patient keeps a patient's volumes together and says so.
    groups = [n.rsplit("_", 2)[0] for n in cand.names]
    assert paired_auroc(cand, base, groups, spec)["bootstrap"]["by"] == "patient"
    # Scores survive the file they are kept in.
    back = load_scores(save_scores(tmp_path / "s" / "x.npz", cand))
    assert back.names == cand.names and back.classes == cand.classes
    assert np.array_equal(back.labels, cand.labels)
    assert np.allclose(back.probabilities, cand.probabilities, atol=1e-7)


def test_sweep_summary_lists_each_seeds_paired_difference() -> None:
    from ablations.summary import format_summary, seed_summary

    def row(variant: str, seed: int, auroc: float, paired: "tuple | None") -> dict:
        block = {"macro": {"auroc": {"value": auroc, "ci_low": auroc - 0.03, "ci_high": auroc + 0.03}}}
        vs = None if paired is None else {"baseline_key": "faithful", "macro_auroc": dict(
            zip(("delta", "ci_low", "ci_high"), paired))}
        return {"status": "ok", "variant_key": variant, "size": "tiny", "data": {"name": "d"}, "seed": seed,
                "protocols": {"ctclip": block}, "vs_baseline": vs}

    rows = [row("faithful", 0, 0.60, None), row("faithful", 1, 0.61, None),
            row("modern", 0, 0.63, (0.03, 0.01, 0.05)), row("modern", 1, 0.60, (-0.01, -0.03, 0.01))]
    text = format_summary(seed_summary(rows))
    assert "paired vs faithful: +0.010 ± 0.028 over seeds; per seed +0.030 [+0.010, +0.050]*, " \
           "-0.010 [-0.030, +0.010]" in text
    assert text.count("paired vs") == 1  # the baseline has nothing to be paired with
    # With each seed's draws (same resamples), the summary gives the interval over seeds and volumes too.
    for r, shift in zip(rows[2:], (0.03, -0.01)):
        r["vs_baseline"].update(bootstrap={"n": 4, "seed": 0}, n_eval=10,
                                macro_auroc_draws=[shift + d for d in (-0.01, 0.0, 0.0, 0.01)])
    assert "over seeds and volumes" in format_summary(seed_summary(rows))
