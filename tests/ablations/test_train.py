"""Training loop mechanics on in-memory tensors: schedule, decay groups, determinism, resume, divergence."""

import functools
import math
from types import SimpleNamespace

import pytest
import torch

from ablations.schedule import build_optimizer, lr_factor
from ablations.train import Diverged, TrainConfig, batch_indices, step_seed, train
from models import SIZES, Variant, build, example_batch

SIZE = SIZES["tiny"]


def _dataset(n=12):
    volumes, ids, _ = example_batch(SIZE, n, seed=3)
    return [SimpleNamespace(volume=volumes[i], text=f"report {i} " + "word " * (i % 5)) for i in range(n)]


@functools.lru_cache(maxsize=1)
def _tokenize():
    from models.text import load_tokenizer, tokenize

    tok = load_tokenizer()
    return lambda texts: tokenize(tok, texts, SIZE.text_max_len)


def _model(seed=0, **changes):
    torch.manual_seed(seed)
    return build(Variant.faithful().replace(**changes), SIZE)


def test_schedule_warms_up_linearly_then_follows_a_cosine_to_the_floor():
    assert lr_factor(0, 10, 110) == pytest.approx(0.1)
    assert lr_factor(9, 10, 110) == pytest.approx(1.0)
    assert lr_factor(60, 10, 110) == pytest.approx(0.01 + 0.99 * 0.5)  # half-way: cos(pi/2) = 0
    assert lr_factor(110, 10, 110) == pytest.approx(0.01)


def test_weight_decay_only_on_matrices():
    model = _model()
    groups = build_optimizer(model, 1e-3, 0.01).param_groups
    assert groups[0]["weight_decay"] == 0.01 and all(p.ndim >= 2 for p in groups[0]["params"])
    assert groups[1]["weight_decay"] == 0.0 and all(p.ndim < 2 for p in groups[1]["params"])
    assert any(p is model.temperature for p in groups[1]["params"])


def test_batches_split_by_rank_cover_the_global_batch():
    full = batch_indices(20, 8, 3, seed=1)
    parts = [batch_indices(20, 8, 3, seed=1, rank=r, world=2) for r in range(2)]
    assert parts[0] + parts[1] == full
    epoch = [i for s in range(2) for i in batch_indices(20, 8, s, seed=1)]
    assert len(set(epoch)) == 16  # no repeats within an epoch
    assert batch_indices(20, 8, 2, seed=1) != batch_indices(20, 8, 0, seed=1)


def test_runs_are_deterministic_and_resume_from_a_mid_run_checkpoint_exactly(tmp_path):
    data, tok = _dataset(), _tokenize()
    cfg = TrainConfig(steps=6, batch=4, lr=1e-3, warmup_steps=2, checkpoint_every=3, seed=0)
    straight = train(_model(), data, tok, cfg, tmp_path / "a", progress=False)
    again = train(_model(), data, tok, cfg, None, progress=False)
    assert [c["loss"] for c in straight.loss_curve] == [c["loss"] for c in again.loss_curve]  # deterministic
    # Keep the step-3 checkpoint of an identical run by interrupting it right after the save.
    calls = {"n": 0}

    def interrupting(texts):
        calls["n"] += 1
        if calls["n"] == 5:  # the 5th batch is step 4: step 3's checkpoint (after 3 steps) exists
            raise KeyboardInterrupt
        return tok(texts)

    with pytest.raises(KeyboardInterrupt):
        train(_model(), data, interrupting, cfg, tmp_path / "b", progress=False)
    resumed = train(_model(seed=5), data, tok, cfg, tmp_path / "b", progress=False)
    assert resumed.resumed_from == 3
    for a, b in zip(straight.loss_curve, resumed.loss_curve):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7)


def test_each_step_draws_from_its_own_seed_and_the_checkpoint_needs_no_generator_state(tmp_path):
    """Dropout on a GPU draws from CUDA generators, one per device, which a saved CPU generator state
    would not restore; reseeding every step from (seed, rank, step) covers them all."""
    assert SIZE.text_dropout > 0  # otherwise the draws would not matter
    data, tok = _dataset(), _tokenize()
    cfg = TrainConfig(steps=3, batch=4, lr=1e-3, warmup_steps=1, checkpoint_every=0, seed=7)
    states = []

    def recording(texts):  # called after the step's batch is drawn, before the forward pass
        states.append(torch.get_rng_state())
        return tok(texts)

    train(_model(), data, recording, cfg, tmp_path, progress=False)
    for step, state in enumerate(states):
        assert torch.equal(state, torch.Generator().manual_seed(step_seed(7, 0, step)).get_state())
    assert "rng" not in torch.load(tmp_path / "last.pt", weights_only=False)
    seeds = {step_seed(7, rank, step) for rank in range(4) for step in range(50)}
    assert len(seeds) == 200  # no two (rank, step) pairs share masks


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    data, tok = _dataset(), _tokenize()
    model = _model()
    cfg = TrainConfig(steps=8, batch=4, lr=1e-3, warmup_steps=1, checkpoint_every=2)
    calls = {"n": 0}
    original = model.encode_image

    def poisoned(volumes):
        calls["n"] += 1
        out = original(volumes)
        return out * float("nan") if calls["n"] == 4 else out

    model.encode_image = poisoned
    with pytest.raises(Diverged) as info:
        train(model, data, tok, cfg, tmp_path, progress=False)
    assert info.value.step == 3 and "nan" in str(info.value) and "step 2" in str(info.value)
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_steps_stay_finite(precision, tmp_path):
    result = train(_model(precision=precision), _dataset(8), _tokenize(),
                   TrainConfig(steps=2, batch=4, lr=1e-3, warmup_steps=1, checkpoint_every=0), tmp_path,
                   progress=False)
    assert all(math.isfinite(c["loss"]) for c in result.loss_curve)
    assert "scaler" in torch.load(tmp_path / "last.pt", weights_only=False)
