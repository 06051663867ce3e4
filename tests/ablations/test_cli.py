"""`python -m ablations.run` end to end on a few phantoms (rows, resume, YAML config, reports hook) and
`python -m ablations.infer` on one of its checkpoints."""

import hashlib
import shutil

import pytest

from ablations.infer import main as infer_main
from ablations.result import SCHEMA_VERSION, read_rows
from ablations.run import main as run_main
from ablations.variants import parse_variant
from models import Variant


def test_variant_list_parser():
    assert parse_variant("faithful") == Variant.faithful()
    assert parse_variant("modern,loss=softmax") == Variant.modern().replace(loss="softmax")
    assert parse_variant("vq=off,attention=sdpa") == Variant.faithful().replace(vq=False, attention="sdpa")
    with pytest.raises(ValueError, match="axis"):
        parse_variant("colour=red")


def test_run_writes_schema_rows_resumes_and_infer_reads_its_checkpoint(phantom_tree, tmp_path, capsys):
    data = phantom_tree(30, 0.3)
    config = tmp_path / "acc.yaml"
    config.write_text(f"data: {data}\nsteps: 3\nbatch: 4\nbootstrap: 20\nvariants: [faithful, 'modern,loss=softmax']\n"
                      "quiet: true\ncheckpoint-every: 2\nreports: []\n")
    out = tmp_path / "out"
    assert run_main(["--config", str(config), "--out", str(out), "--seeds", "2"]) == 0
    rows = read_rows(out / "accuracy.jsonl")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    row = rows[0]
    assert row["schema_version"] == SCHEMA_VERSION and row["kind"] == "accuracy"
    assert row["cell_key"] == f"faithful|tiny|seed0|{data.name}" and row["baseline"] is True
    assert set(row["protocols"]) == {"ctclip", "clean", "maxf1"}
    assert row["protocols"]["maxf1"]["optimistic"] is True and row["protocols"]["clean"]["optimistic"] is False
    assert len(row["loss_curve"]) == 3 and row["training"]["steps"] == 3
    assert len(row["classes"]) == 18 and row["prompts"]["template"] == "present"
    assert row["data"]["n_eval"] > 0 and row["data"]["source"] == "synthetic"
    labels_csv = data / "dataset" / "multi_abnormality_labels" / "valid_predicted_labels.csv"
    assert len(row["data"]["csv_sha256"]) == 6  # labels, reports and metadata of both splits
    assert row["data"]["csv_sha256"]["multi_abnormality_labels/valid_predicted_labels.csv"] == \
        hashlib.sha256(labels_csv.read_bytes()).hexdigest()[:16]
    assert (out / "accuracy.csv").exists() and len(list((out / "curves").glob("*.json"))) == 4
    # Every row kept its scores; each modern row is compared, paired, with the faithful row of its seed.
    assert all((out / r["scores_file"]).exists() for r in rows)
    for seed, modern in ((0, rows[2]), (1, rows[3])):
        vs, base = modern["vs_baseline"], rows[seed]
        assert base["vs_baseline"] is None and vs["baseline_cell_key"] == base["cell_key"]
        auroc = [r["protocols"]["ctclip"]["macro"]["auroc"]["value"] for r in (modern, base)]
        assert vs["macro_auroc"]["delta"] == pytest.approx(auroc[0] - auroc[1])
        assert vs["macro_auroc"]["ci_low"] <= vs["macro_auroc"]["delta"] <= vs["macro_auroc"]["ci_high"]
        assert vs["bootstrap"] == dict(base["protocols"]["ctclip"]["bootstrap"], by=vs["bootstrap"]["by"])
        assert len(vs["macro_auroc_draws"]) == 20  # bootstrap: 20 in the config; kept for combining seeds
    # Resume: nothing left to do.
    assert run_main(["--config", str(config), "--out", str(out), "--seeds", "2"]) == 0
    assert len(read_rows(out / "accuracy.jsonl")) == 4
    assert "skip faithful|tiny|seed1" in capsys.readouterr().out

    volume = next((data / "dataset" / "valid_fixed").rglob("*.nii.gz"))
    checkpoint = next((out / "checkpoints").glob("faithful*")) / "last.pt"
    assert infer_main(["--checkpoint", str(checkpoint), "--volume", str(volume),
                       "--prompts", "Pleural effusion", "Cardiomegaly"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].split()[-1].replace(".", "").isdigit() and "Cardiomegaly" in printed[2]
    assert infer_main(["--checkpoint", str(tmp_path / "missing.pt"), "--volume", str(volume)]) == 2


def test_config_rejects_unknown_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: x\nstepz: 3\n")
    with pytest.raises(SystemExit):
        run_main(["--config", str(bad)])


@pytest.mark.parametrize("world_size", [1, 2])
def test_a_failing_cell_ends_a_ddp_run_but_not_a_single_process_sweep(phantom_tree, tmp_path, monkeypatch, world_size):
    """One process records the error and goes on; under DDP the other ranks are inside the failed cell's
    collectives, so the rank stops (torchrun then stops them) rather than start the next cell alone."""
    import ablations.run as run_module
    from ablations.distributed import DistContext

    def failing_cell(*args, **kwargs):
        raise RuntimeError("unreadable volume")

    monkeypatch.setattr(run_module, "init_from_env", lambda device_type: DistContext(0, world_size))
    monkeypatch.setattr(run_module, "run_cell", failing_cell)
    argv = ["--data", str(phantom_tree(30, 0.3)), "--out", str(tmp_path), "--variants", "faithful",
            "--steps", "1", "--quiet", "--reports"]
    if world_size == 1:
        assert run_main(argv) == 0
        assert [r["status"] for r in read_rows(tmp_path / "accuracy.jsonl")] == ["error"]
    else:
        with pytest.raises(RuntimeError, match="unreadable volume"):
            run_main(argv)


def test_a_corrupt_volume_stops_the_run_unless_it_is_skipped(phantom_tree, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(phantom_tree(30, 0.3), data)
    volumes = sorted((data / "dataset" / "train_fixed").rglob("*.nii.gz"))
    volumes[2].write_bytes(volumes[2].read_bytes()[:100])  # a truncated download
    argv = ["--data", str(data), "--out", str(tmp_path / "out"), "--variants", "faithful", "--steps", "2",
            "--batch", "4", "--bootstrap", "0", "--quiet", "--reports", "--loader-workers", "2"]
    # Read in a loader worker, the error still ends the run with its own one-line message.
    assert run_main(argv) == 2
    [message] = capsys.readouterr().err.strip().splitlines()
    assert message.startswith(f"error: {volumes[2]}: cannot read the NIfTI volume")
    assert message.endswith("it is corrupt or truncated; re-download it, or pass --skip-bad to leave it out")
    assert run_main(argv + ["--skip-bad"]) == 0
    [row] = read_rows(tmp_path / "out" / "accuracy.jsonl")
    assert row["status"] == "ok" and row["data"]["n_train"] + row["data"]["n_calibration"] == len(volumes) - 1
