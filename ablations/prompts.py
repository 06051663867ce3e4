"""Zero-shot prompt templates: one positive and one negative sentence per abnormality.

`present` is CT-CLIP's zero-shot script ("{p} is present." / "{p} is not present."), the default;
`there-is` is what CT-CLIP's in-training validation and CTCLIP_MODERN use ("There is {p}." /
"There is no {p}."). The class name is lower-cased inside a sentence ("There is pleural effusion.") and
kept as written at the start of one, which is how both upstream scripts fill the templates.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    positive: str
    negative: str

    def pair(self, pathology: str) -> tuple[str, str]:
        return _fill(self.positive, pathology), _fill(self.negative, pathology)

    def as_dict(self) -> dict[str, str]:
        return {"template": self.name, "positive": self.positive, "negative": self.negative}


TEMPLATES: dict[str, PromptTemplate] = {
    "present": PromptTemplate("present", "{p} is present.", "{p} is not present."),
    "there-is": PromptTemplate("there-is", "There is {p}.", "There is no {p}."),
}
DEFAULT_TEMPLATE = "present"


def _fill(template: str, pathology: str) -> str:
    # Upstream inserts the label verbatim; the tokenizer is uncased, so case only matters for display.
    return template.format(p=pathology if template.startswith("{p}") else pathology.lower())


def get_template(name: str) -> PromptTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown prompt template {name!r}; valid templates: {', '.join(TEMPLATES)}") from None


def build_prompts(classes: "list[str] | tuple[str, ...]",
                  template: "str | PromptTemplate" = DEFAULT_TEMPLATE) -> list[str]:
    """2 * len(classes) sentences, ordered [pos_0, neg_0, pos_1, neg_1, ...] (reshape to (C, 2))."""
    tpl = get_template(template) if isinstance(template, str) else template
    return [s for c in classes for s in tpl.pair(c)]
