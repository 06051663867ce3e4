import subprocess
import sys

import pytest
import torch

from models import SIZES
from models.summary import main
from models.text import bert_config, load_tokenizer, tokenize


def test_summary_prints_paper_counts_without_allocating(capsys):
    assert main(["--variant", "faithful", "--size", "paper", "--depth", "1"]) == 0
    text = capsys.readouterr().out
    assert "23,421,768" in text and "150,994,944" in text and "108,891,648" in text and "283,701,577" in text


def test_summary_cli_runs_as_a_module_and_rejects_bad_axes():
    done = subprocess.run([sys.executable, "-m", "models.summary", "--variant", "modern", "--size", "tiny"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "attn=sdpa_flash" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "models.summary", "--set", "norm=batchnorm"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "invalid value 'batchnorm' for axis 'norm'" in bad.stderr


def test_paper_text_config_is_cxr_bert():
    config = bert_config(SIZES["paper"])
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size,
            config.vocab_size, config.max_position_embeddings) == (12, 768, 12, 3072, 30522, 512)
    assert config.hidden_dropout_prob == config.attention_probs_dropout_prob == 0.25


def test_offline_tokenizer_pads_to_max_length_like_ctclip():
    tokenizer = load_tokenizer()
    ids, mask = tokenize(tokenizer, ["Pleural effusion is present.", "No nodule."], max_len=16)
    assert ids.shape == mask.shape == (2, 16)
    assert ids[0, 0].item() == tokenizer.cls_token_id and mask[1].sum() < 16
    assert tokenizer.convert_ids_to_tokens(ids[0, 1].item()) == "pl"  # uncased WordPiece: "pleural" -> pl ##eur ##al
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer("/nonexistent/cxr-bert")


def test_minilm_switch_loads_real_pretrained_weights():
    from models import Variant, build

    model = build(Variant(text="minilm"), "tiny").eval()
    tokenizer = load_tokenizer()
    ids, mask = tokenize(tokenizer, ["A man is eating food.", "A man is eating a piece of bread.",
                                      "A man is playing a guitar."], max_len=16)
    with torch.no_grad():
        hidden = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    # Real sentence-embedding weights rank the paraphrase far above the unrelated sentence.
    assert pooled[0] @ pooled[1] > 0.6 > 0.4 > pooled[0] @ pooled[2]


def test_local_text_weights_and_tokenizer_folders_load(tmp_path):
    """A user-named local checkpoint (a downloaded CXR-BERT, say) fills the bert-base tower; no hub involved."""
    from transformers import BertModel

    from models import SIZES, Variant, build

    saved = BertModel(bert_config(SIZES["tiny"]), add_pooling_layer=False)
    saved.save_pretrained(tmp_path / "bert")
    load_tokenizer().save_pretrained(tmp_path / "bert")
    model = build(Variant(), "tiny", text_weights=tmp_path / "bert")
    for (name, ours), theirs in zip(model.text_encoder.state_dict().items(), saved.state_dict().values()):
        assert torch.equal(ours, theirs), name
    tokenizer = load_tokenizer(tmp_path / "bert")
    assert tokenizer.tokenize("Pleural effusion") == load_tokenizer().tokenize("Pleural effusion")
