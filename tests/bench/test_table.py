"""The terminal table: deltas against the baseline row and honest memory labels."""

from bench.result import Memory, Result, StageStats
from bench.table import render


def row(key, step, saved, baseline=False, status="ok", reason=None):
    stats = {s: StageStats(step / 5, 0, step / 5, step / 5, 3) for s in
             ("text_forward", "vision_forward", "loss", "backward", "optimizer")}
    stats["step"] = StageStats(step, 0, step, step, 3)
    return Result(cell_key=key, variant_key=key, variant={}, size="tiny", size_config={}, batch=4,
                  device={"type": "cpu"}, status=status, baseline=baseline, reason=reason,
                  stages=stats if status == "ok" else {},
                  memory=Memory(param_bytes=0, grad_bytes=0, optimizer_state_bytes=0, saved_activations_bytes=saved))


def test_deltas_against_baseline_and_cpu_memory_label():
    text = render([row("faithful", 0.020, 2**30, baseline=True), row("modern", 0.015, 2**29),
                   row("flash", 0, 0, status="unsupported", reason="needs CUDA")])
    lines = text.splitlines()
    assert "CPU: params+grads+opt+saved" in lines[0] and "GPU" not in lines[0]
    modern = next(line for line in lines if line.startswith("modern"))
    assert "-25.0" in modern and "-50.0" in modern and "15.00" in modern
    assert "faithful (baseline)" in text and "needs CUDA" in text
