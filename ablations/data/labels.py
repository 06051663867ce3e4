"""The 18 CT-RATE abnormality labels and a sampler that reproduces their prevalence and co-occurrence.

Names and order are CT-RATE's own (the header order of the multi-abnormality label CSVs). The
prevalences are approximate training-set figures read off CT-RATE's published label distribution
(to a few percentage points); the co-occurrence structure comes from a Gaussian copula with five
clinical latent factors, so each marginal is exact in expectation while related findings (aortic and
coronary calcification, effusions with cardiomegaly, consolidation with opacity...) appear together.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

ABNORMALITIES: tuple[str, ...] = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)
INDEX: dict[str, int] = {name: i for i, name in enumerate(ABNORMALITIES)}

# Approximate CT-RATE training-set prevalence (fraction of volumes labelled positive).
PREVALENCE: dict[str, float] = {
    "Medical material": 0.10,
    "Arterial wall calcification": 0.28,
    "Cardiomegaly": 0.10,
    "Pericardial effusion": 0.07,
    "Coronary artery wall calcification": 0.25,
    "Hiatal hernia": 0.14,
    "Lymphadenopathy": 0.26,
    "Emphysema": 0.19,
    "Atelectasis": 0.25,
    "Lung nodule": 0.45,
    "Lung opacity": 0.37,
    "Pulmonary fibrotic sequela": 0.27,
    "Pleural effusion": 0.12,
    "Mosaic attenuation pattern": 0.08,
    "Peribronchial thickening": 0.11,
    "Consolidation": 0.17,
    "Bronchiectasis": 0.10,
    "Interlobular septal thickening": 0.08,
}

# Loadings of each label on five latent factors: age/atherosclerosis, heart failure/fluid,
# infection/airspace disease, airway disease, fibrosis. A label's squared loadings must sum below 1.
_FACTORS = ("vascular", "fluid", "airspace", "airway", "fibrosis")
_LOADINGS: dict[str, tuple[float, float, float, float, float]] = {
    "Medical material": (0.30, 0.30, 0.0, 0.0, 0.0),
    "Arterial wall calcification": (0.85, 0.0, 0.0, 0.0, 0.0),
    "Cardiomegaly": (0.30, 0.60, 0.0, 0.0, 0.0),
    "Pericardial effusion": (0.0, 0.65, 0.0, 0.0, 0.0),
    "Coronary artery wall calcification": (0.85, 0.0, 0.0, 0.0, 0.0),
    "Hiatal hernia": (0.35, 0.0, 0.0, 0.0, 0.0),
    "Lymphadenopathy": (0.0, 0.20, 0.40, 0.0, 0.20),
    "Emphysema": (0.30, 0.0, 0.0, 0.35, 0.0),
    "Atelectasis": (0.0, 0.40, 0.45, 0.0, 0.0),
    "Lung nodule": (0.20, 0.0, 0.0, 0.0, 0.30),
    "Lung opacity": (0.0, 0.0, 0.65, 0.0, 0.25),
    "Pulmonary fibrotic sequela": (0.20, 0.0, 0.0, 0.20, 0.60),
    "Pleural effusion": (0.0, 0.65, 0.30, 0.0, 0.0),
    "Mosaic attenuation pattern": (0.0, 0.0, 0.0, 0.55, 0.0),
    "Peribronchial thickening": (0.0, 0.0, 0.20, 0.65, 0.0),
    "Consolidation": (0.0, 0.0, 0.75, 0.0, 0.0),
    "Bronchiectasis": (0.0, 0.0, 0.0, 0.60, 0.35),
    "Interlobular septal thickening": (0.0, 0.40, 0.25, 0.0, 0.45),
}

_LOAD = np.array([_LOADINGS[name] for name in ABNORMALITIES], dtype=np.float64)
_UNIQUE = np.sqrt(1.0 - (_LOAD**2).sum(axis=1))
_THRESHOLD = np.array([NormalDist().inv_cdf(1.0 - PREVALENCE[name]) for name in ABNORMALITIES])
assert (_LOAD**2).sum(axis=1).max() < 1.0, "a label's factor loadings exceed unit variance"


def sample_labels(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """One (18,) or n (n, 18) int8 label rows drawn with CT-RATE-like prevalence and co-occurrence."""
    rows = 1 if n is None else n
    factors = rng.standard_normal((rows, len(_FACTORS)))
    latent = factors @ _LOAD.T + rng.standard_normal((rows, len(ABNORMALITIES))) * _UNIQUE
    labels = (latent > _THRESHOLD).astype(np.int8)
    return labels[0] if n is None else labels
