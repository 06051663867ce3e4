"""`python -m ablations.evaluate_checkpoint`: a run's checkpoint scores as the run scored it, and an
upstream CT-CLIP file scores as upstream's zero-shot script computes it."""

import hashlib

import pytest
import torch
import torch.nn.functional as F

from ablations.data.labels import ABNORMALITIES
from ablations.evaluate_checkpoint import main as evaluate_main
from ablations.paired import load_scores
from ablations.result import read_rows
from ablations.run import main as run_main
from models import Variant, build
from models.checkpoint import load_upstream_checkpoint
from models.text import load_tokenizer, minilm_path
from tests.models.upstream_names import TINY, upstream_state_dict


def test_a_run_checkpoint_scores_exactly_as_the_run_did(phantom_tree, tmp_path, capsys):
    data = phantom_tree(30, 0.3)
    trained = tmp_path / "trained"
    assert run_main(["--data", str(data), "--variants", "faithful", "--steps", "3", "--batch", "4", "--seed-list", "1",
                     "--bootstrap", "20", "--quiet", "--reports", "--out", str(trained)]) == 0
    [run_row] = read_rows(trained / "accuracy.jsonl")
    [checkpoint] = trained.glob("checkpoints/*/last.pt")

    out = tmp_path / "evaluated"
    argv = ["--checkpoint", str(checkpoint), "--data", str(data), "--bootstrap", "20", "--out", str(out),
            "--reports", "md"]
    assert evaluate_main(argv) == 0
    [row] = read_rows(out / "accuracy.jsonl")
    # The same weights, volumes, calibration patients and bootstrap draws: every figure agrees.
    assert set(row["protocols"]) == set(run_row["protocols"]) == {"ctclip", "clean", "maxf1"}
    for name, block in run_row["protocols"].items():
        for metric, entry in block["macro"].items():
            assert row["protocols"][name]["macro"][metric] == pytest.approx(entry, abs=1e-6), (name, metric)
    ours, theirs = load_scores(out / row["scores_file"]), load_scores(trained / run_row["scores_file"])
    assert list(ours.names) == list(theirs.names)
    torch.testing.assert_close(torch.as_tensor(ours.probabilities), torch.as_tensor(theirs.probabilities))

    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:16]
    assert row["design"] == "checkpoint" and row["variant_key"] == "faithful@checkpoint" and row["seed"] == 1
    assert row["cell_key"] == f"faithful@checkpoint|tiny|seed1|{data.name}|valid|present|sha{sha}"
    assert row["training"]["steps"] == 3 and row["training"]["checkpoint_sha256"] == sha
    assert row["training"]["source"] == "ablations.run"
    for field in ("n_eval", "n_calibration", "source", "split"):
        assert row["data"][field] == run_row["data"][field], field
    assert "n_train" not in row["data"]
    assert "| SA + GEGLU + LN [checkpoint] | Softmax |" in (out / "reports" / "accuracy-ctclip.md").read_text()
    assert evaluate_main(argv) == 0  # evaluated already: skipped
    assert len(read_rows(out / "accuracy.jsonl")) == 1 and "skip faithful@checkpoint" in capsys.readouterr().out


def _upstream_reference(state: dict, volume: torch.Tensor, pathology: str) -> float:
    """P(present) as upstream's zero-shot script computes it: CTCLIP(text pair, volume) gives
    temperature.exp() times the cosine similarities, and a softmax over the pair takes the first."""
    model = build(Variant.faithful(), TINY)
    load_upstream_checkpoint(model, state)
    model.eval()
    tokenizer = load_tokenizer(str(minilm_path()))
    tokens = tokenizer([f"{pathology} is present.", f"{pathology} is not present."], padding="max_length",
                       truncation=True, max_length=TINY.text_max_len, return_tensors="pt")
    with torch.no_grad():
        hidden = model.text_encoder(input_ids=tokens["input_ids"],
                                    attention_mask=tokens["attention_mask"]).last_hidden_state
        text = F.normalize(model.to_text_latent(hidden[:, 0]), dim=-1)
        image = model.encode_image(volume[None])
        logits = text @ image.t() * state["temperature"].exp()
    return torch.softmax(logits[:, 0], dim=0)[0].item()


def test_an_upstream_file_scores_as_upstreams_zero_shot_script(phantom_tree, tmp_path, capsys):
    data = phantom_tree(30, 0.3)
    state = upstream_state_dict(seed=3)
    checkpoint = tmp_path / "CT-CLIP_v2.pt"
    torch.save(state, checkpoint)
    out = tmp_path / "evaluated"
    base = ["--checkpoint", str(checkpoint), "--data", str(data), "--upstream-size", "tiny", "--out", str(out),
            "--bootstrap", "0", "--protocols", "ctclip", "--reports"]
    assert evaluate_main(base) == 2
    assert "needs --tokenizer" in capsys.readouterr().err
    assert evaluate_main([*base, "--tokenizer", str(minilm_path())]) == 0
    [row] = read_rows(out / "accuracy.jsonl")
    assert row["variant_key"] == "faithful@CT-CLIP_v2" and row["training"]["source"] == "upstream CT-CLIP"
    assert row["training"]["steps"] is None and row["prompts"]["template"] == "present"
    from ablations.data.ctrate import CTRateDataset  # here: nibabel, which the GPU image lacks

    scores = load_scores(out / row["scores_file"])
    valid = CTRateDataset(data, "valid", TINY)
    assert list(scores.names) == valid.names and row["data"]["n_calibration"] == 0
    for i, c in ((0, 0), (len(valid) - 1, 7)):
        expected = _upstream_reference(state, valid[i].volume, ABNORMALITIES[c])
        assert scores.probabilities[i, c] == pytest.approx(expected, abs=1e-5)


def test_what_is_not_a_checkpoint_is_refused(phantom_tree, tmp_path, capsys):
    data = phantom_tree(30, 0.3)
    other = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(2)}, other)
    assert evaluate_main(["--checkpoint", str(other), "--data", str(data)]) == 2
    assert "neither a checkpoint written by ablations.run" in capsys.readouterr().err
    assert evaluate_main(["--checkpoint", str(tmp_path / "missing.pt"), "--data", str(data)]) == 2
    assert "does not exist" in capsys.readouterr().err
