"""Radiology reports (findings and impression) written from templates, consistent with the findings.

Every positive label gets at least one affirmative sentence quoting the rendered sites and sizes; a
negative label is either not mentioned or explicitly negated, never affirmed. Phrasing follows the
style of CT-RATE's translated reports, with synonyms drawn at random.
"""

from __future__ import annotations

import numpy as np

from ablations.data.findings import Finding
from ablations.data.labels import ABNORMALITIES


def _join(items: tuple[str, ...] | list[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _mm(x: float) -> str:
    return f"{int(round(x))} mm"


def _sentence(f: Finding, rng: np.random.Generator) -> tuple[str, str]:
    """(findings sentence, impression phrase) for one positive finding."""
    pick = lambda *options: str(rng.choice(options))  # noqa: E731
    lobes = _join(f.sites) if f.sites else ""
    n = f.name
    if n == "Medical material":
        text = {"pacemaker": "A cardiac pacemaker is seen in the left anterior chest wall with its leads "
                             "extending into the right heart cavities.",
                "sternotomy wires": "Sternotomy wires are present, consistent with previous cardiac surgery.",
                "port catheter": "A port catheter is seen in the right anterior chest wall, its tip in the superior "
                                 "vena cava.",
                "surgical clips": "Metallic surgical clips are noted in the hilar region."}[f.kind]
        return text, {"pacemaker": "Pacemaker.", "sternotomy wires": "Sternotomy wires.",
                      "port catheter": "Port catheter.", "surgical clips": "Surgical clips."}[f.kind]
    if n == "Arterial wall calcification":
        return (pick(f"{f.kind.capitalize()} calcific atherosclerotic plaques are seen in the wall of the "
                     "thoracic aorta.",
                     f"{f.kind.capitalize()} arterial wall calcification in the aortic arch and descending aorta."),
                "Atherosclerotic calcification of the thoracic aorta.")
    if n == "Cardiomegaly":
        return (pick("Cardiomegaly is present.", "The heart is enlarged; cardiothoracic ratio is increased."),
                "Cardiomegaly.")
    if n == "Pericardial effusion":
        return (f"Pericardial effusion reaching {_mm(f.sizes[0])} in thickness.", "Pericardial effusion.")
    if n == "Coronary artery wall calcification":
        return (pick(f"Calcified plaques are seen in the coronary arteries ({_join(f.sites)}).",
                     f"Coronary artery wall calcification involving the {_join(f.sites)}."),
                "Coronary artery calcification.")
    if n == "Hiatal hernia":
        return (f"A sliding type hiatal hernia measuring {_mm(f.sizes[0])} is seen at the oesophageal hiatus.",
                pick("Hiatal hernia.", "Hiatus hernia."))
    if n == "Lymphadenopathy":
        nodes = _join([f"{s} ({_mm(z)} short axis)" for s, z in zip(f.sites, f.sizes)])
        return (pick(f"Pathologically enlarged lymph nodes are seen in the {nodes} stations.",
                     f"Mediastinal lymphadenopathy in the {nodes} regions."), "Mediastinal lymphadenopathy.")
    if n == "Emphysema":
        return (pick(f"{f.kind.capitalize()} emphysematous changes are seen in the {lobes}.",
                     f"{f.kind.capitalize()} emphysema in the {lobes}."), f"{f.kind.capitalize()} emphysema.")
    if n == "Atelectasis":
        return (f"{f.kind.capitalize()} atelectasis is seen in the {lobes}.", "Atelectasis.")
    if n == "Lung nodule":
        kind = "calcified " if f.kind == "calcified" else ""
        if len(f.sites) == 1:
            text = f"A {_mm(f.sizes[0])} {kind}nodule is seen in the {f.sites[0]}."
        else:
            parts = _join([f"{_mm(z)} in the {s}" for s, z in zip(f.sites, f.sizes)])
            text = f"Multiple {kind}pulmonary nodules are seen, measuring {parts}."
        return text, pick("Pulmonary nodule.", "Lung nodule.") if len(f.sites) == 1 else "Pulmonary nodules."
    if n == "Lung opacity":
        return (pick(f"Ground-glass opacities are seen in the {lobes}.",
                     f"Patchy ground glass density areas in the {lobes}."),
                "Ground-glass opacities.")
    if n == "Pulmonary fibrotic sequela":
        pattern = "linear bands" if f.kind == "bands" else "reticular changes"
        return (pick(f"Fibrotic sequelae ({pattern}) in the {lobes}.",
                     f"Sequelae fibrotic changes are observed in the {lobes}."), "Fibrotic sequelae.")
    if n == "Pleural effusion":
        where = "bilateral" if len(f.sites) == 2 else f.sites[0]
        depth = _join([f"{_mm(z)} on the {s}" for s, z in zip(f.sites, f.sizes)])
        return (f"There is {where} pleural effusion, measuring {depth} in its thickest part.",
                f"{where.capitalize()} pleural effusion.")
    if n == "Mosaic attenuation pattern":
        return (pick("A mosaic attenuation pattern is seen in both lungs.",
                     "Mosaic attenuation pattern in both lungs."),
                "Mosaic attenuation pattern.")
    if n == "Peribronchial thickening":
        return (pick(f"Peribronchial thickening in the {lobes}.", f"Bronchial wall thickening is seen in the {lobes}."),
                "Peribronchial thickening.")
    if n == "Consolidation":
        return (f"Consolidation with air bronchograms, about {_mm(max(f.sizes))} across, in the {lobes}.",
                pick("Consolidation.", "Pneumonic consolidation."))
    if n == "Bronchiectasis":
        return (f"{f.kind.capitalize()} bronchiectasis is seen in the {lobes}.", "Bronchiectasis.")
    if n == "Interlobular septal thickening":
        return (f"Interlobular septal thickening in the {lobes}.", "Interlobular septal thickening.")
    raise AssertionError(n)


# Negative statements as CT-RATE reports phrase them; None means "usually left unsaid".
NEGATIONS: dict[str, tuple[str, ...]] = {
    "Medical material": (),
    "Arterial wall calcification": ("No calcific atherosclerotic plaque is seen in the thoracic aorta.",),
    "Cardiomegaly": ("Heart contour and size are normal.",),
    "Pericardial effusion": ("Pericardial effusion-thickening was not observed.", "No pericardial effusion."),
    "Coronary artery wall calcification": ("No coronary artery calcification is seen.",),
    "Hiatal hernia": ("No hiatal hernia.",),
    "Lymphadenopathy": ("No lymph node in pathological size and appearance was detected in the mediastinum "
                        "or hilar regions.",),
    "Emphysema": ("No emphysema.",),
    "Atelectasis": ("No atelectasis.",),
    "Lung nodule": ("No nodule or mass was detected in either lung.",),
    "Lung opacity": ("No ground-glass opacity.",),
    "Pulmonary fibrotic sequela": (),
    "Pleural effusion": ("No pleural effusion.", "Pleural effusion-thickening was not detected."),
    "Mosaic attenuation pattern": (),
    "Peribronchial thickening": (),
    "Consolidation": ("No consolidation.", "No infiltrative lesion or consolidation was detected."),
    "Bronchiectasis": ("No bronchiectasis.",),
    "Interlobular septal thickening": (),
}

_NEUTRAL = ("Trachea and both main bronchi are open.", "Thoracic aorta diameter is normal.",
            "Oesophagus is of normal calibre along its visible course.",
            "Bone structures in the study area are natural.",
            "Upper abdominal organs included in the sections are unremarkable.")


def write_report(labels: np.ndarray, findings: list[Finding], rng: np.random.Generator) -> tuple[str, str]:
    """(Findings_EN, Impressions_EN) for one scan."""
    by_name = {f.name: f for f in findings}
    findings_text: list[str] = [_NEUTRAL[0]]
    impression: list[str] = []
    for name, on in zip(ABNORMALITIES, labels):
        if on:
            sentence, short = _sentence(by_name[name], rng)
            findings_text.append(sentence)
            impression.append(short)
        elif NEGATIONS[name] and rng.random() < 0.7:
            findings_text.append(str(rng.choice(NEGATIONS[name])))
    findings_text += [s for s in _NEUTRAL[1:] if rng.random() < 0.6]
    if not impression:
        impression_text = str(rng.choice(["No significant pathology was detected in the thorax.", "Not given."]))
    else:
        impression_text = " ".join(impression)
    return " ".join(findings_text), impression_text
