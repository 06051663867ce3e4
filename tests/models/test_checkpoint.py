"""Loading an upstream CT-CLIP v2 state dict (tests/models/upstream_names.py builds one from upstream's
names and shapes, independently of models/checkpoint.py's mapping rules)."""

import pytest
import torch

from models import Variant, build
from models.checkpoint import CheckpointError, load_upstream_checkpoint
from tests.models.upstream_names import TINY, upstream_state_dict


def test_upstream_checkpoint_loads_into_the_faithful_variant(tmp_path):
    upstream = upstream_state_dict()
    path = tmp_path / "CT-CLIP_v2.pt"
    torch.save(upstream, path)
    model = build(Variant.faithful(), "tiny")
    dropped = load_upstream_checkpoint(model, path)

    v = "visual_transformer."
    pairs = {
        v + "to_patch_emb.2.weight": model.visual_encoder.patch_embed.proj.weight,
        v + "to_patch_emb.1.bias": model.visual_encoder.patch_embed.norm_in.bias,
        v + "spatial_rel_pos_bias.net.1.0.weight": model.visual_encoder.position.net[1][0].weight,
        v + "enc_spatial_transformer.layers.1.0.dsconv.weight": model.visual_encoder.spatial.layers[1].peg.conv.weight,
        v + "enc_temporal_transformer.layers.0.1.norm.gamma": model.visual_encoder.temporal.layers[0].attn.norm.weight,
        v + "enc_temporal_transformer.layers.1.1.to_kv.weight":
            model.visual_encoder.temporal.layers[1].attn.to_kv.weight,
        v + "enc_spatial_transformer.layers.0.1.q_scale": model.visual_encoder.spatial.layers[0].attn.q_scale,
        v + "enc_spatial_transformer.layers.0.3.0.bias": model.visual_encoder.spatial.layers[0].ff.norm.bias,
        v + "enc_spatial_transformer.layers.0.3.1.weight": model.visual_encoder.spatial.layers[0].ff.proj_in.weight,
        v + "enc_temporal_transformer.layers.1.3.4.weight": model.visual_encoder.temporal.layers[1].ff.proj_out.weight,
        v + "enc_temporal_transformer.norm_out.gamma": model.visual_encoder.temporal.norm_out.weight,
        v + "vq._codebook.embed": model.visual_encoder.vq.embed,
        "text_transformer.encoder.layer.1.attention.self.key.weight":
            model.text_encoder.encoder.layer[1].attention.self.key.weight,
        "to_visual_latent.weight": model.to_visual_latent.weight,
        "temperature": model.temperature,
    }
    for key, tensor in pairs.items():
        assert torch.equal(upstream[key], tensor.detach()), key

    expected_dropped = {k for k in upstream if "_extra." in k or "pooler" in k or "position_ids" in k
                        or "to_pixels" in k or "first_frame" in k or "context_norm" in k or k.endswith("null_kv")
                        or k.endswith(".beta")}
    assert set(dropped) == expected_dropped
    model(*__import__("models").example_batch("tiny", batch=2))  # the loaded model runs


def test_unknown_missing_and_misshaped_keys_fail_clearly():
    model = build(Variant.faithful(), "tiny")
    state = upstream_state_dict()
    state["visual_transformer.mystery.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="keys the mapping does not know.*mystery"):
        load_upstream_checkpoint(model, state)

    state = upstream_state_dict()
    del state["visual_transformer.enc_spatial_transformer.layers.0.1.to_q.weight"]
    with pytest.raises(CheckpointError, match="model keys the checkpoint lacks.*spatial.layers.0.attn.to_q"):
        load_upstream_checkpoint(model, state)

    state = upstream_state_dict(size=TINY.replace(dim_latent=8))
    with pytest.raises(CheckpointError, match="shape mismatches.*to_visual_latent"):
        load_upstream_checkpoint(model, state)

    state = upstream_state_dict()
    state["visual_transformer.enc_spatial_transformer.norm_out.beta"] += 1
    with pytest.raises(CheckpointError, match="beta buffer is not zero"):
        load_upstream_checkpoint(model, state)


def test_incompatible_variant_and_missing_file_fail_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="norm in .*rmsnorm"):
        load_upstream_checkpoint(build(Variant(norm="rmsnorm"), "tiny"), upstream_state_dict())
    with pytest.raises(CheckpointError, match="does not exist"):
        load_upstream_checkpoint(build(Variant(), "tiny"), tmp_path / "absent.pt")


def test_cpb_table_and_accelerate_prefix_load_too():
    state = {f"module.{k}": v for k, v in upstream_state_dict().items()}
    load_upstream_checkpoint(build(Variant(position="cpb_table"), "tiny"), state)
