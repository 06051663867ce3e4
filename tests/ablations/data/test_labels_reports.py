"""Label prevalence/co-occurrence against CT-RATE-like figures; reports agree with labels."""

import re

import numpy as np

from ablations.data.findings import sample_findings
from ablations.data.labels import ABNORMALITIES, INDEX, sample_labels
from ablations.data.reports import write_report

# CT-RATE training-set prevalence, approximately (independent copy of the published distribution).
CT_RATE = {"Lung nodule": 0.45, "Lung opacity": 0.37, "Arterial wall calcification": 0.28,
           "Pericardial effusion": 0.07, "Mosaic attenuation pattern": 0.08, "Cardiomegaly": 0.10}


def _phi(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_prevalence_and_cooccurrence_are_ct_rate_like():
    rows = sample_labels(np.random.default_rng(0), 6000)
    assert rows.shape == (6000, 18) and set(np.unique(rows)) <= {0, 1}
    for name, p in CT_RATE.items():
        assert abs(rows[:, INDEX[name]].mean() - p) < 0.025, name
    col = lambda n: rows[:, INDEX[n]]  # noqa: E731
    assert _phi(col("Arterial wall calcification"), col("Coronary artery wall calcification")) > 0.3
    assert _phi(col("Consolidation"), col("Lung opacity")) > 0.2
    assert _phi(col("Pleural effusion"), col("Pericardial effusion")) > 0.1
    assert abs(_phi(col("Hiatal hernia"), col("Consolidation"))) < 0.06


# An independent lexicon: what a reader would take as a mention of each abnormality.
LEXICON = {
    "Medical material": r"pacemaker|sternotomy|port catheter|surgical clip",
    "Arterial wall calcification": r"(?=.*\baort)(?=.*(calcif|atheroscl))(?!.*coronar)",
    "Cardiomegaly": r"cardiomegaly|heart is enlarged|cardiothoracic ratio is increased",
    "Pericardial effusion": r"pericardial (effusion|fluid)",
    "Coronary artery wall calcification": r"coronary",
    "Hiatal hernia": r"hiatal hernia|hiatus hernia",
    "Lymphadenopathy": r"lymphadenopathy|lymph node",
    "Emphysema": r"emphysem",
    "Atelectasis": r"atelecta",
    "Lung nodule": r"nodule",
    "Lung opacity": r"ground.glass",
    "Pulmonary fibrotic sequela": r"fibrotic",
    "Pleural effusion": r"pleural effusion",
    "Mosaic attenuation pattern": r"mosaic",
    "Peribronchial thickening": r"peribronchial|bronchial wall thickening",
    "Consolidation": r"consolidation",
    "Bronchiectasis": r"bronchiecta",
    "Interlobular septal thickening": r"septal thickening",
}
NEGATED = re.compile(r"^(no|there is no)\b|\bnot (observed|detected|seen)\b|\bwas not\b", re.I)


def test_reports_affirm_every_positive_and_never_a_negative():
    rng = np.random.default_rng(1)
    for _ in range(300):
        labels = sample_labels(rng)
        findings_text, impression = write_report(labels, sample_findings(labels, rng), rng)
        affirmed: set[str] = set()
        for sentence in re.split(r"(?<=\.)\s+", findings_text + " " + impression):
            for name, pattern in LEXICON.items():
                if re.search(pattern, sentence, re.I):
                    if NEGATED.search(sentence):
                        assert labels[INDEX[name]] == 0, (name, sentence)
                    else:
                        affirmed.add(name)
        positives = {n for n, on in zip(ABNORMALITIES, labels) if on}
        assert affirmed == positives, (sorted(affirmed ^ positives), findings_text, impression)
