"""Two gloo processes on CPU give the gradients and the VQ codebook of one process on the combined batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from models import SIZES, Variant, build, example_batch

SIZE = SIZES["tiny"].replace(text_dropout=0.0)  # dropout masks would differ between the two layouts
CASES = [("softmax", "shift"), ("siglip", "gather"), ("siglip", "shift")]
BATCH = 6  # 3 per rank


def _model(loss: str):
    torch.manual_seed(0)
    return build(Variant.faithful().replace(loss=loss), SIZE)


def _codebook(model) -> dict[str, torch.Tensor]:
    """The VQ's EMA buffers, which the training forward updates from the tokens it sees."""
    vq = model.visual_encoder.vq
    return {"embed": vq.embed.clone(), "cluster_size": vq.cluster_size.clone()}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ablations.distributed import Towers, contrastive_loss

    volumes, ids, mask = example_batch(SIZE, BATCH, seed=1)
    part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)  # data split by rank
    results = {}
    for loss_name, impl in CASES:
        model = _model(loss_name)
        towers = DDP(Towers(model))
        text, image = towers(volumes[part], ids[part], mask[part])
        loss = contrastive_loss(loss_name, text, image, model.temperature, model.logit_bias, impl)
        loss.backward()
        total = loss.detach().clone()
        dist.all_reduce(total)
        results[(loss_name, impl)] = ({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
                                      total / world)
        results[("codebook", loss_name, impl)] = _codebook(model)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_grads(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(c))
def test_two_gloo_processes_match_one_process_on_the_combined_batch(two_process_grads, case):
    loss_name, _ = case
    model = _model(loss_name)
    volumes, ids, mask = example_batch(SIZE, BATCH, seed=1)
    out = model(volumes, ids, mask)  # models.losses' single-process loss on all 6 pairs
    out.loss.backward()
    reference = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    # Some gradients are exactly zero in theory (a per-head constant bias under softmax) and are pure
    # rounding noise in practice, so the absolute tolerance is set by the largest gradient.
    scale = max(g.abs().max().item() for g in reference.values())
    for rank_result in two_process_grads:
        grads, loss = rank_result[case]
        assert loss.item() == pytest.approx(out.loss.item(), rel=1e-5)
        assert set(grads) == set(reference)
        for name, grad in reference.items():
                        torch.testing.assert_close(grads[name], grad, rtol=1e-3, atol=1e-5 * scale,
                                                   msg=lambda m, c=case, n=name: f"{c} {n}: {m}")
    # The comparison can fail: half the batch alone gives different gradients.
    half = _model(loss_name)
    half(volumes[:3], ids[:3], mask[:3]).loss.backward()
    assert not torch.allclose(half.temperature.grad, reference["temperature"])


def test_every_rank_updates_the_codebook_from_the_combined_batch(two_process_grads):
    model = _model("softmax")
    volumes, ids, mask = example_batch(SIZE, BATCH, seed=1)
    model(volumes, ids, mask)
    reference = _codebook(model)
    for rank_result in two_process_grads:
        for case in CASES:
            for name, buffer in rank_result[("codebook", *case)].items():
                torch.testing.assert_close(buffer, reference[name], rtol=1e-5, atol=1e-6,
                                           msg=lambda m, c=case, n=name: f"{c} {n}: {m}")
    # A rank's own half of the batch moves the codebook elsewhere (what DDP's broadcast of rank 0's
    # buffers would keep if the counts and sums were not summed over ranks).
    half = _model("softmax")
    half(volumes[:3], ids[:3], mask[:3])
    assert not torch.allclose(_codebook(half)["embed"], reference["embed"], atol=1e-4)
