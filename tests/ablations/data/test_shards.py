"""Directory -> shards -> reader equals directory -> loader; node/worker splitting; resumable prepare."""

import json

import torch

from ablations.data import prepare
from ablations.data.ctrate import CTRateDataset
from ablations.data.shards import ShardReader


def test_round_trip_resume_and_splitting(tiny_tree, tmp_path):
    out = tmp_path / "shards"
    assert prepare.main(["--src", str(tiny_tree), "--out", str(out), "--size", "tiny", "--split", "train",
                         "--per-shard", "1", "--workers", "2"]) == 0
    manifest = json.loads((out / "train" / "manifest.json").read_text())
    ds = CTRateDataset(tiny_tree, "train", size="tiny")
    assert manifest["total_samples"] == len(ds) == len(manifest["shards"])
    assert manifest["volume_shape"] == [12, 40, 40]

    samples = {s.name: s for s in ShardReader(out / "train")}
    assert sorted(samples) == sorted(ds.names)
    for name, s in samples.items():
        direct = ds.load(name)
        # Shards store fp16 (as MODERN's): equal to the direct loader's tensor after the same rounding.
        assert s.volume.dtype == torch.float32 and torch.equal(s.volume, direct.volume.half().float())
        assert s.text == direct.text and torch.equal(s.labels, direct.labels)

    # Resume: only the missing shard is rebuilt, and it comes back byte-identical.
    first = out / "train" / "shard-000000.tar"
    before = first.read_bytes()
    first.unlink()
    others = {p: p.stat().st_mtime_ns for p in (out / "train").glob("shard-*.tar")}
    # The resume runs in this process (workers=1): it must leave the caller's torch threads alone.
    torch.set_num_threads(2)
    assert prepare.main(["--src", str(tiny_tree), "--out", str(out), "--size", "tiny", "--split", "train",
                         "--per-shard", "1"]) == 0
    assert torch.get_num_threads() == 2
    assert first.read_bytes() == before
    assert all(p.stat().st_mtime_ns == t for p, t in others.items())

    # Two nodes, each with two DataLoader workers: every sample exactly once.
    seen = []
    for rank in range(2):
        reader = ShardReader(out / "train", rank=rank, world_size=2)
        loader = torch.utils.data.DataLoader(reader, batch_size=None, num_workers=2, collate_fn=lambda s: s)
        names = [s.name for s in loader]
        assert names, f"node {rank} got nothing"
        seen += names
    assert sorted(seen) == sorted(ds.names)
