"""A random upstream CT-CLIP v2 state dict: names and shapes read off upstream's code
(CT_CLIP/ct_clip/ct_clip.py, transformer_maskgit/{ctvit,attention}.py, vector_quantize_pytorch 1.1.2,
transformers' BertModel with its pooler), independently of models/checkpoint.py's mapping rules."""

import torch

from models import SIZES

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
