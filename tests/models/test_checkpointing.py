"""checkpointing=on recomputes activations in backward; it must not change what is computed: the same
loss and the same gradient for every parameter as the uncheckpointed model (same weights and seed,
dropout included: non-reentrant checkpointing replays the RNG state)."""

import pytest
import torch

from models import Variant, build, example_batch


def _loss_and_grads(variant: Variant, state: dict, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = build(variant, "tiny").train()
    model.load_state_dict(state)
    torch.manual_seed(7)
    loss = model(*batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("variant", [
    Variant.faithful(),
    Variant.modern().replace(position="rope", vq_impl="chunked"),
], ids=lambda v: v.key)
def test_checkpointing_changes_no_loss_or_gradient(variant):
    torch.manual_seed(0)
    state = build(variant, "tiny").state_dict()
    batch = example_batch("tiny", batch=3)
    loss, grads = _loss_and_grads(variant, state, batch)
    loss_ckpt, grads_ckpt = _loss_and_grads(variant.replace(checkpointing=True), state, batch)
    torch.testing.assert_close(loss_ckpt, loss)
    assert grads.keys() == grads_ckpt.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-7, msg=name)
