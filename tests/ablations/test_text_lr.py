"""The text-tower LR option: its own parameter groups, a locked (cached) tower that never moves and
matches the model's own text encoding, and `--size-set` overrides for CPU-sized runs."""

from types import SimpleNamespace

import pytest
import torch

from ablations.distributed import Towers
from ablations.run import override_size
from ablations.schedule import build_optimizer, lr_factor
from ablations.train import TrainConfig, train
from models import SIZES, Variant, build, example_batch

SIZE = SIZES["tiny"]


def _model(seed=0):
    torch.manual_seed(seed)
    return build(Variant.faithful().replace(vq=False), SIZE)


def _tokenize():
    from models.text import load_tokenizer, tokenize

    tok = load_tokenizer()
    return lambda texts: tokenize(tok, texts, SIZE.text_max_len)


def test_default_keeps_one_lr_and_a_scale_gives_the_text_tower_its_own_groups():
    model = _model()
    assert all("lr" not in g or g["lr"] == 1e-3 for g in build_optimizer(model, 1e-3).param_groups)
    groups = build_optimizer(model, 1e-3, 0.01, text_lr_scale=0.1).param_groups
    text = {id(p) for p in model.text_encoder.parameters()}
    for group in groups:
        in_text = {id(p) in text for p in group["params"]}
        assert len(in_text) <= 1, "a group mixes text-tower and other parameters"
        assert group["lr"] == pytest.approx(1e-4 if in_text == {True} else 1e-3)
    # Every trainable parameter is in exactly one group; the projection is not part of the tower.
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(ids) == len(set(ids))
    assert id(model.to_text_latent.weight) not in text
    scheduler = torch.optim.lr_scheduler.LambdaLR(torch.optim.AdamW(groups), lambda s: lr_factor(s, 10, 100))
    assert scheduler.get_last_lr()[-1] == pytest.approx(1e-5)  # the warm-up scales every group alike


def test_locked_text_tower_is_cached_unchanged_and_matches_encode_text():
    model, tok = _model(), _tokenize()
    volumes, _, _ = example_batch(SIZE, 8, seed=3)
    data = [SimpleNamespace(volume=volumes[i], text=f"report {i % 4} " + "word " * i) for i in range(8)]
    before = {k: v.clone() for k, v in model.text_encoder.state_dict().items()}
    projection = model.to_text_latent.weight.detach().clone()
    train(model, data, tok, TrainConfig(steps=3, batch=4, lr=1e-2, warmup_steps=1, checkpoint_every=0,
                                        text_lr_scale=0.0), progress=False)
    after = model.text_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the locked text tower moved"
    assert not torch.equal(projection, model.to_text_latent.weight), "the text projection must still train"

    towers = Towers(model, frozen_text=True)
    ids, mask = tok([d.text for d in data[:4]])
    model.train()  # the cache encodes in eval mode whatever the tower's mode, as zero-shot does
    cached, _ = towers(volumes[:4], ids, mask)
    model.eval()
    with torch.no_grad():
        direct = model.encode_text(ids, mask)
    torch.testing.assert_close(cached.detach(), direct)
    assert len(towers._cls) == 4


def test_size_overrides_are_typed_and_rename_the_size():
    size = override_size(SIZE, ["text_dropout=0", "codebook_size=512"], text_max_len=160)
    assert size.text_dropout == 0.0 and size.codebook_size == 512 and size.text_max_len == 160
    assert size.name == "tiny[text_dropout=0.0,codebook_size=512]"
    assert override_size(SIZE, [], 96).name == "tiny"
    with pytest.raises(ValueError, match="FIELD"):
        override_size(SIZE, ["colour=red"])
