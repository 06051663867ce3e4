"""From a trained model to the accuracy row's `protocols` and `roc` blocks."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from sklearn.metrics import roc_curve

from ablations.bootstrap import BootstrapSpec
from ablations.metrics import is_defined
from ablations.protocols import calibrate, evaluate_protocol
from ablations.zeroshot import ZeroShotScores, zero_shot


def patient_groups(names: Sequence[str]) -> "list[str] | None":
    """CT-RATE patient ids ("valid_53") from volume names, or None when the names are not CT-RATE's."""
    from ablations.data.layout import VolumeId

    try:
        return [f"{v.split}_{v.patient}" for v in map(VolumeId.parse, names)]
    except ValueError:
        return None


def roc_points(scores: ZeroShotScores) -> dict[str, dict[str, list[float]]]:
    out = {}
    for i, c in enumerate(scores.classes):
        if is_defined(scores.labels[:, i]):
            fpr, tpr, _ = roc_curve(scores.labels[:, i], scores.probabilities[:, i])
            out[c] = {"fpr": [round(float(x), 6) for x in fpr], "tpr": [round(float(x), 6) for x in tpr]}
    return out


def evaluate_model(model, eval_set: Sequence, tokenize: Callable, classes: Sequence[str], template: str,
                   protocols: Sequence[str], bootstrap: BootstrapSpec, calibration_set: "Sequence | None" = None,
                   batch: int = 8, workers: int = 0) -> tuple[dict[str, Any], dict[str, Any], ZeroShotScores]:
    """(protocol blocks, ROC points, raw scores) for `model` on `eval_set`."""
    scores = zero_shot(model, eval_set, tokenize, classes, template, batch, workers)
    thresholds = None
    if "clean" in protocols and calibration_set is not None and len(calibration_set) > 0:
        held_out = zero_shot(model, calibration_set, tokenize, classes, template, batch, workers)
        thresholds = calibrate(held_out.labels, held_out.probabilities)
    groups = patient_groups(scores.names)
    blocks = {name: evaluate_protocol(name, scores.labels, scores.probabilities, list(classes), groups,
                                      thresholds if name == "clean" else None, bootstrap)
              for name in protocols}
    return blocks, roc_points(scores), scores


def add_evaluation_arguments(parser) -> None:
    """The metric flags `ablations.run` and `ablations.evaluate_checkpoint` share, with one meaning."""
    from ablations.protocols import PROTOCOLS

    parser.add_argument("--protocols", nargs="+", choices=sorted(PROTOCOLS), default=["ctclip", "clean", "maxf1"])
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples (0: no CIs)")
    parser.add_argument("--bootstrap-seed", type=int, default=0)
    parser.add_argument("--calibration-fraction", type=float, default=0.1,
                        help="share of training patients held out to fit `clean` thresholds (0: fixed 0.5)")
    parser.add_argument("--eval-batch", type=int, default=8)


def macro_value(block: dict[str, Any], metric: str = "auroc") -> "float | None":
    return block["macro"][metric]["value"]


