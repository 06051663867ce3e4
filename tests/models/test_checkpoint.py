"""Loading an upstream CT-CLIP v2 state dict: names and shapes below are read off upstream's code
(CT_CLIP/ct_clip/ct_clip.py, transformer_maskgit/{ctvit,attention}.py, vector_quantize_pytorch 1.1.2,
transformers' BertModel with its pooler), independently of models/checkpoint.py's mapping rules."""

import pytest
import torch

from models import SIZES, Variant, build
from models.checkpoint import CheckpointError, load_upstream_checkpoint

TINY = SIZES["tiny"]


def upstream_state_dict(size=TINY, seed=0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    d, heads, dh, inner = size.dim, size.heads, size.dim_head, size.ff_inner
    pd, first_pd = size.patch_dim, size.channels * size.patch_size ** 2
    shapes = {"temperature": (), "to_text_latent.weight": (size.dim_latent, size.text_hidden),
              "to_visual_latent.weight": (size.dim_latent, size.dim_image),
              "to_text_latent_extra.weight": (size.dim_latent, size.text_hidden),
              "to_visual_latent_extra.weight": (size.dim_latent, size.dim_image)}
    v = "visual_transformer."
    shapes |= {v + "spatial_rel_pos_bias.net.0.0.weight": (d, 2), v + "spatial_rel_pos_bias.net.0.0.bias": (d,),
               v + "spatial_rel_pos_bias.net.1.0.weight": (d, d), v + "spatial_rel_pos_bias.net.1.0.bias": (d,),
               v + "spatial_rel_pos_bias.net.2.weight": (heads, d), v + "spatial_rel_pos_bias.net.2.bias": (heads,)}
    for prefix, width in (("to_patch_emb_first_frame", first_pd), ("to_patch_emb", pd)):
        shapes |= {f"{v}{prefix}.1.weight": (width,), f"{v}{prefix}.1.bias": (width,),
                   f"{v}{prefix}.2.weight": (d, width), f"{v}{prefix}.2.bias": (d,),
                   f"{v}{prefix}.3.weight": (d,), f"{v}{prefix}.3.bias": (d,)}
    for stage, depth in (("enc_spatial_transformer", size.spatial_depth),
                         ("enc_temporal_transformer", size.temporal_depth)):
        for i in range(depth):
            layer = f"{v}{stage}.layers.{i}."
            shapes |= {layer + "0.dsconv.weight": (d, 1, 3, 3, 3), layer + "0.dsconv.bias": (d,),
                       layer + "1.null_kv": (heads, 0, dh), layer + "1.q_scale": (dh,), layer + "1.k_scale": (dh,),
                       layer + "1.norm.gamma": (d,), layer + "1.norm.beta": (d,),
                       layer + "1.context_norm.gamma": (d,), layer + "1.context_norm.beta": (d,),
                       layer + "1.to_q.weight": (heads * dh, d), layer + "1.to_kv.weight": (2 * heads * dh, d),
                       layer + "1.to_out.weight": (d, heads * dh),
                       layer + "3.0.weight": (d,), layer + "3.0.bias": (d,),
                       layer + "3.1.weight": (2 * inner, d), layer + "3.4.weight": (d, inner)}
        shapes |= {f"{v}{stage}.norm_out.gamma": (d,), f"{v}{stage}.norm_out.beta": (d,)}
    shapes |= {v + "vq._codebook.initted": (1,), v + "vq._codebook.cluster_size": (1, size.codebook_size),
               v + "vq._codebook.embed": (1, size.codebook_size, d),
               v + "to_pixels_first_frame.0.weight": (first_pd, d), v + "to_pixels_first_frame.0.bias": (first_pd,),
               v + "to_pixels.0.weight": (pd, d), v + "to_pixels.0.bias": (pd,)}
    t, hid = "text_transformer.", size.text_hidden
    shapes |= {t + "embeddings.word_embeddings.weight": (size.text_vocab_size, hid),
               t + "embeddings.position_embeddings.weight": (512, hid),
               t + "embeddings.token_type_embeddings.weight": (2, hid),
               t + "embeddings.LayerNorm.weight": (hid,), t + "embeddings.LayerNorm.bias": (hid,),
               t + "pooler.dense.weight": (hid, hid), t + "pooler.dense.bias": (hid,)}
    for i in range(size.text_layers):
        layer = f"{t}encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes |= {f"{layer}{name}.weight": (hid, hid), f"{layer}{name}.bias": (hid,)}
        shapes |= {layer + "intermediate.dense.weight": (size.text_intermediate, hid),
                   layer + "intermediate.dense.bias": (size.text_intermediate,),
                   layer + "output.dense.weight": (hid, size.text_intermediate), layer + "output.dense.bias": (hid,)}
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes |= {f"{layer}{name}.weight": (hid,), f"{layer}{name}.bias": (hid,)}
    state = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    state = {k: (torch.zeros_like(x) if k.endswith("beta") else x) for k, x in state.items()}
    state[t + "embeddings.position_ids"] = torch.arange(512)[None]
    return state


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
