"""At paper size the faithful model's parameter counts equal upstream CT-CLIP v2's exactly.

Upstream figures (reference/ctclip-v2.md §8, from upstream's code): encoder path 23,425,864 registered,
of which 8 context-norm gains of 512 are never used; image projection 294,912 x 512; text projection
768 x 512; BERT trunk 109,482,240 including its 590,592-parameter pooler.
"""

import torch

from models import SIZES, Variant
from models.ctclip import CTCLIP
from models.summary import component_totals
from models.text import bert_config


def _paper_model(variant: Variant) -> CTCLIP:
    with torch.device("meta"):
        return CTCLIP(variant, SIZES["paper"])


def test_faithful_paper_counts_equal_upstream():
    totals = component_totals(_paper_model(Variant.faithful()))
    unused_context_norm_gains = 8 * 512
    visual_path = totals["visual encoder path (patch embed + position + both transformers)"]
    assert visual_path == 23_425_864 - unused_context_norm_gains
    assert totals["image projection"] == 150_994_944 == 294_912 * 512
    assert totals["text projection"] == 393_216
    assert totals["text trunk"] == 108_891_648
    assert totals["loss (temperature, bias)"] == 1
    assert totals["VQ codebook (buffer, not trained by gradients)"] == 8192 * 512


def test_bert_trunk_with_pooler_matches_upstream_registration():
    from transformers import BertModel

    with torch.device("meta"):
        with_pooler = BertModel(bert_config(SIZES["paper"]), add_pooling_layer=True)
    assert sum(p.numel() for p in with_pooler.parameters()) == 109_482_240


def test_switches_that_keep_shapes_keep_counts():
    base = component_totals(_paper_model(Variant.faithful()))
    for variant in (Variant(mlp="swiglu"), Variant(attention="sdpa"), Variant(position="cpb_table")):
        assert component_totals(_paper_model(variant)) == base
    # RMSNorm drops the FF norm's bias (512 per layer, 8 layers); no position bias drops the CPB MLP.
    modern = component_totals(_paper_model(Variant(norm="rmsnorm")))
    assert base["visual encoder path (patch embed + position + both transformers)"] - \
        modern["visual encoder path (patch embed + position + both transformers)"] == 8 * 512
    siglip = component_totals(_paper_model(Variant(loss="siglip")))
    assert siglip["loss (temperature, bias)"] == 2
