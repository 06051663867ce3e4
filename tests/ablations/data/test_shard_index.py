"""Prepared shards read by index (ablations.data.shard_index): the same samples as the stream reader and
the direct loader, and a whole `ablations.run` / `ablations.evaluate_checkpoint` on them."""

import json

import numpy as np
import pytest
import torch

from ablations.data import prepare
from ablations.data.ctrate import CTRateDataset
from ablations.data.errors import DataError
from ablations.data.shard_index import ShardDataset
from ablations.data.shards import ShardReader
from ablations.evaluate_checkpoint import main as evaluate_main
from ablations.paired import load_scores
from ablations.result import read_rows
from ablations.run import main as run_main

TINY_SHAPE = (12, 40, 40)


def _prepare(src, out, per_shard: int, split: str = "all") -> None:
    assert prepare.main(["--src", str(src), "--out", str(out), "--size", "tiny", "--split", split,
                         "--per-shard", str(per_shard)]) == 0


def test_samples_by_index_equal_the_stream_and_the_rounded_loader(tiny_tree, tmp_path):
    out = tmp_path / "shards"
    _prepare(tiny_tree, out, per_shard=2, split="train")  # 3 volumes: shards of 2 and 1
    indexed = ShardDataset(out / "train", TINY_SHAPE)
    direct = CTRateDataset(tiny_tree, "train", size="tiny")
    assert indexed.names == sorted(direct.names) and len(indexed.manifest["shards"]) == 2
    streamed = {s.name: s for s in ShardReader(out / "train")}
    for i in reversed(range(len(indexed))):  # out of order: each read seeks on its own
        sample = indexed[i]
        assert sample.name == indexed.names[i]
        assert torch.equal(sample.volume, streamed[sample.name].volume)
        assert torch.equal(sample.volume, direct.load(sample.name).volume.half().float())
        assert sample.text == direct.text(sample.name) and torch.equal(sample.labels, direct.label_row(sample.name))
    loader = torch.utils.data.DataLoader(indexed, batch_size=2, shuffle=True, num_workers=2, collate_fn=list)
    assert sorted(s.name for batch in loader for s in batch) == indexed.names
    described = indexed.manifest["data"]
    assert described["name"] == tiny_tree.name and described["source"] == "synthetic"
    assert sorted(described["csv_sha256"]) == sorted(f"{kind}/train_{suffix}" for kind, suffix in (
        ("multi_abnormality_labels", "predicted_labels.csv"), ("radiology_text_reports", "reports.csv"),
        ("metadata", "metadata.csv")))


def test_shards_of_another_size_or_damaged_ones_are_refused(tiny_tree, tmp_path):
    out = tmp_path / "shards"
    _prepare(tiny_tree, out, per_shard=2, split="train")
    with pytest.raises(DataError, match=r"prepared at \[12, 40, 40\].*takes \[24, 80, 80\]"):
        ShardDataset(out / "train", (24, 80, 80))
    first = out / "train" / "shard-000000.tar"
    first.write_bytes(first.read_bytes()[:3000])  # cut inside the first volume
    with pytest.raises(DataError, match="shard-000000.tar"):
        ShardDataset(out / "train")
    with pytest.raises(DataError, match="manifest is missing"):
        ShardDataset(tmp_path / "nowhere")


@pytest.mark.slow
def test_a_run_on_shards_matches_the_run_on_their_tree(phantom_tree, tmp_path, capsys):
    data = phantom_tree(30, 0.3)
    shards = tmp_path / "shards"
    _prepare(data, shards, per_shard=8)
    common = ["--variants", "vq=off", "--steps", "3", "--batch", "4", "--bootstrap", "20", "--quiet",
              "--reports"]
    assert run_main(["--data", str(data), "--out", str(tmp_path / "tree"), *common]) == 0
    assert run_main(["--data", str(shards), "--out", str(tmp_path / "sharded"), "--skip-bad", *common]) == 0
    assert "--skip-bad and --rescale applied when they were prepared" in capsys.readouterr().out
    [tree_row], [shard_row] = read_rows(tmp_path / "tree" / "accuracy.jsonl"), \
        read_rows(tmp_path / "sharded" / "accuracy.jsonl")
    assert shard_row["data"]["name"] == f"{data.name}-shards" and shard_row["data"]["shards"] == str(shards.resolve())
    assert shard_row["data"]["csv_sha256"] == tree_row["data"]["csv_sha256"]
    for field in ("n_train", "n_calibration", "n_eval", "source"):
        assert shard_row["data"][field] == tree_row["data"][field], field
    # The same batches of the same volumes, rounded to float16 once. Without VQ (whose nearest-code
    # search a rounding can flip) the first step's loss agrees to that rounding; AdamW's normalised
    # updates then let the runs drift apart a little.
    losses = [[p["loss"] for p in row["loss_curve"]] for row in (tree_row, shard_row)]
    np.testing.assert_allclose(losses[1][0], losses[0][0], rtol=1e-3)
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-2)
    tree_scores = load_scores(tmp_path / "tree" / tree_row["scores_file"])
    shard_scores = load_scores(tmp_path / "sharded" / shard_row["scores_file"])
    assert list(shard_scores.names) == list(tree_scores.names)
    np.testing.assert_allclose(shard_scores.probabilities, tree_scores.probabilities, atol=2e-3)

    # The tree run's checkpoint, evaluated on the shards: its own scores, to the same rounding.
    [checkpoint] = (tmp_path / "tree").glob("checkpoints/*/last.pt")
    assert evaluate_main(["--checkpoint", str(checkpoint), "--data", str(shards), "--bootstrap", "0",
                          "--out", str(tmp_path / "evaluated"), "--reports"]) == 0
    [row] = read_rows(tmp_path / "evaluated" / "accuracy.jsonl")
    assert row["data"]["n_calibration"] == tree_row["data"]["n_calibration"]
    evaluated = load_scores(tmp_path / "evaluated" / row["scores_file"])
    np.testing.assert_allclose(evaluated.probabilities, tree_scores.probabilities, atol=2e-3)
    assert json.loads((shards / "valid" / "manifest.json").read_text())["data"]["name"] == data.name
