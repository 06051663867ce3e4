"""The bootstrap really resamples: intervals shrink with n, differ between resamples, keep patients whole."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ablations.bootstrap import BootstrapSpec, resample_weights
from ablations.protocols import evaluate_protocol


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (n, 2))
    s = 1 / (1 + np.exp(-(rng.normal(size=(n, 2)) + 1.2 * (2 * y - 1))))
    return y, s


def _width(block, metric="auroc"):
    m = block["macro"][metric]
    return m["ci_high"] - m["ci_low"]


def test_intervals_shrink_as_n_grows():
    small = evaluate_protocol("clean", *_data(40), ["a", "b"], bootstrap=BootstrapSpec(n=300))
    large = evaluate_protocol("clean", *_data(640), ["a", "b"], bootstrap=BootstrapSpec(n=300))
    # Width scales like 1/sqrt(n): 16x the data should give roughly a quarter of the width.
    assert _width(large) < 0.5 * _width(small)
    for block in (small, large):
        m = block["macro"]["auroc"]
        assert m["ci_low"] < m["value"] < m["ci_high"]


def test_intervals_differ_between_resamples_and_seeds():
    y, s = _data(80)
    a = evaluate_protocol("ctclip", y, s, ["a", "b"], bootstrap=BootstrapSpec(n=200, seed=0))
    b = evaluate_protocol("ctclip", y, s, ["a", "b"], bootstrap=BootstrapSpec(n=200, seed=1))
    assert _width(a) > 0 and _width(a, "f1") > 0
    assert (a["macro"]["auroc"]["ci_low"], a["macro"]["auroc"]["ci_high"]) != \
           (b["macro"]["auroc"]["ci_low"], b["macro"]["auroc"]["ci_high"])
    W = resample_weights(80, 50, 0)
    assert len({tuple(w) for w in W}) == 50  # every resample is a different draw
    assert np.all(W.sum(axis=1) == 80)


def test_resampled_auroc_equals_sklearn_on_the_drawn_indices():
    y, s = _data(60)
    W = resample_weights(60, 3, 7)
    from ablations import weighted

    for w in W:
        idx = np.repeat(np.arange(60), w.astype(int))  # the resample written out as indices
        assert weighted.auroc(y[:, 0], s[:, 0], w[None])[0] == pytest.approx(roc_auc_score(y[idx, 0], s[idx, 0]))


def test_patients_are_resampled_whole():
    groups = np.array([0, 0, 1, 2, 2, 2, 3])
    W = resample_weights(len(groups), 100, 0, groups)
    for g in np.unique(groups):
        assert np.all(W[:, groups == g] == W[:, groups == g][:, :1])
    counts_per_patient = W[:, [0, 2, 3, 6]]
    assert np.all(counts_per_patient.sum(axis=1) == 4)
    y, s = _data(7)
    block = evaluate_protocol("clean", y, s, ["a", "b"], groups=groups, bootstrap=BootstrapSpec(n=50))
    assert block["bootstrap"]["by"] == "patient"
