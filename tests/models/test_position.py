import torch

from models.position import AxialRotary, ContinuousPositionBias, apply_rotary


def _upstream_cpb(net, h, w):
    """CT-CLIP's ContinuousPositionBias.forward, written out from upstream attention.py."""
    positions = [torch.arange(h), torch.arange(w)]
    grid = torch.stack(torch.meshgrid(*positions, indexing="ij"))  # (2, h, w)
    grid = grid.reshape(2, -1).t()  # 'c ... -> (...) c'
    rel_pos = grid[:, None, :] - grid[None, :, :]
    rel_pos = torch.sign(rel_pos) * torch.log(rel_pos.abs() + 1)
    x = rel_pos.float()
    for layer in net:
        x = layer(x.float())
    return x.permute(2, 0, 1)


def test_cpb_matches_upstream_formula_on_a_non_square_slab():
    cpb = ContinuousPositionBias(dim=24, heads=3)
    bias = cpb(3, 5, torch.device("cpu")).bias
    assert bias.shape == (3, 15, 15)
    torch.testing.assert_close(bias, _upstream_cpb(cpb.net, 3, 5), rtol=0, atol=0)


def test_cpb_table_equals_cpb_in_values_and_gradients():
    full = ContinuousPositionBias(dim=24, heads=3)
    table = ContinuousPositionBias(dim=24, heads=3, gather_table=True)
    table.load_state_dict(full.state_dict())
    probe = torch.randn(3, 20, 20, generator=torch.Generator().manual_seed(0))
    outputs = []
    for module in (full, table):
        bias = module(4, 5, torch.device("cpu")).bias
        (bias * probe).sum().backward()
        outputs.append((bias.detach(), [p.grad.clone() for p in module.parameters()]))
    torch.testing.assert_close(outputs[0][0], outputs[1][0], rtol=1e-6, atol=1e-6)
    for g_full, g_table in zip(outputs[0][1], outputs[1][1]):
        torch.testing.assert_close(g_full, g_table, rtol=1e-5, atol=1e-6)


def test_cpb_table_evaluates_the_mlp_on_unique_offsets_only():
    table = ContinuousPositionBias(dim=8, heads=2, gather_table=True)
    seen = []
    table.net[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    table(24, 24, torch.device("cpu"))
    assert seen == [47 * 47]


def test_axial_rope_preserves_norms_and_depends_only_on_offsets():
    rope = AxialRotary(dim_head=16)(4, 6, torch.device("cpu")).rope
    gen = torch.Generator().manual_seed(0)
    q_vec, k_vec = torch.randn(16, generator=gen), torch.randn(16, generator=gen)
    same = lambda v: v.expand(1, 1, 24, 16).clone()  # noqa: E731 - the same vector at every position
    q, k = apply_rotary(same(q_vec), rope)[0, 0], apply_rotary(same(k_vec), rope)[0, 0]
    torch.testing.assert_close(q.norm(dim=-1), q_vec.norm().expand(24))
    scores = q @ k.t()

    def index(r, c):
        return r * 6 + c

    # (0,0)->(1,2) and (2,3)->(3,5) share the offset (1, 2); so do rows/columns shifted together.
    torch.testing.assert_close(scores[index(0, 0), index(1, 2)], scores[index(2, 3), index(3, 5)])
    torch.testing.assert_close(scores[index(3, 1), index(0, 0)], scores[index(3, 5), index(0, 4)])
    # Different offsets give different scores (the embedding does carry position).
    assert not torch.allclose(scores[index(0, 0), index(1, 2)], scores[index(0, 0), index(2, 1)])
