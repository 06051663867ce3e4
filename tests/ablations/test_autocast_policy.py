"""`--autocast-policy`: a CPU accuracy run in bf16 can follow CUDA's autocast casts, and says so."""

import pytest
import torch

from ablations.autocast_policy import autocast_policy
from ablations.result import read_rows
from ablations.run import main as run_main
from models import Variant, build, example_batch
from models.transformer import Layer

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_which_policy_a_cell_runs_under():
    assert autocast_policy("cuda", "fp32", CPU).name == "none"  # no autocast, nothing to emulate
    assert autocast_policy("device", "bf16", CPU) == autocast_policy("device", "bf16", CPU)
    assert autocast_policy("device", "bf16", CPU).name == "cpu"
    emulated = autocast_policy("cuda", "bf16", CPU)
    assert emulated.emulate_cuda and emulated.name == "cuda (emulated on the cpu)"
    assert emulated.key_suffix == "|cuda-autocast" and autocast_policy("device", "bf16", CPU).key_suffix == ""
    native = autocast_policy("cuda", "bf16", CUDA)
    assert native.name == "cuda" and not native.emulate_cuda
    with pytest.raises(ValueError, match="choices: device, cuda"):
        autocast_policy("tpu", "bf16", CPU)


def test_the_emulated_policy_gives_the_stream_a_gpus_dtype():
    # Upstream's stream leaves the patch embedding's LayerNorm: bf16 under the CPU's policy, fp32 under
    # CUDA's. Only the emulated run can tell `residual=fp32` from `residual=autocast`.
    model = build(Variant(precision="bf16"), "tiny")
    first_layer = next(m for m in model.modules() if isinstance(m, Layer))
    seen = []
    first_layer.register_forward_pre_hook(lambda _, args: seen.append(args[0].dtype))
    batch = example_batch("tiny")
    for requested in ("device", "cuda"):
        with autocast_policy(requested, "bf16", CPU).context():
            model(*batch)
    assert seen == [torch.bfloat16, torch.float32]


def test_rows_under_each_policy_stay_apart(phantom_tree, tmp_path):
    data = phantom_tree(30, 0.3)
    out = tmp_path / "out"
    common = ["--data", str(data), "--out", str(out), "--steps", "2", "--batch", "4", "--bootstrap", "10",
              "--precision", "bf16", "--variants", "modern", "modern,residual=autocast", "--quiet",
              "--reports"]
    assert run_main(common + ["--autocast-policy", "cuda"]) == 0
    assert run_main(common) == 0  # the same cells under the CPU's own policy: run, not resumed
    rows = read_rows(out / "accuracy.jsonl")
    assert [r["training"]["autocast_policy"] for r in rows] == ["cuda (emulated on the cpu)"] * 2 + ["cpu"] * 2
    assert rows[0]["cell_key"].endswith("|cuda-autocast") and not rows[2]["cell_key"].endswith("|cuda-autocast")
    assert rows[1]["vs_baseline"]["baseline_cell_key"] == rows[0]["cell_key"]
    assert rows[3]["vs_baseline"]["baseline_cell_key"] == rows[2]["cell_key"]


def test_a_candidate_pairs_only_with_a_baseline_of_the_same_numerics():
    from ablations.result import AccuracyResult
    from ablations.run import _same_autocast

    def row(policy):
        return {"training": {} if policy is None else {"autocast_policy": policy}}

    emulated = AccuracyResult(cell_key="k", variant_key="modern", variant={}, size="tiny", size_config={}, batch=4,
                              seed=0, status="ok", training={"autocast_policy": "cuda (emulated on the cpu)"})
    assert _same_autocast(row("cuda (emulated on the cpu)"), emulated)
    assert not _same_autocast(row("cpu"), emulated)
    assert _same_autocast(row("none"), emulated)  # an fp32 baseline runs no autocast under either
    assert _same_autocast(row(None), emulated)  # rows written before the field existed
