"""bench.gpu_estimates: the order of the background estimates, and collecting what the workers wrote."""

import json
import subprocess
import sys
import time

from bench.cell import CellSpec, base_result
from bench.gpu_estimates import EstimateWorkers, _result_file, _worker_dir, estimate_jobs
from bench.gpu_plan import make_plan


def test_every_planned_cell_is_estimated_once_paper_size_first():
    plan = make_plan(dry_run=False)
    jobs = estimate_jobs(plan)
    keys = [(part.size, part.batch, cell.key) for part, cell in jobs]
    assert len(keys) == len(set(keys))
    planned = {(p.size, p.batch, c.key) for p in plan.cell_parts for c in p.cells}
    assert set(keys) == planned
    sizes = [size for size, _, _ in keys]
    assert sizes == sorted(sizes, key=lambda s: s != "paper") and sizes[0] == "paper" and "small" in sizes
    assert len(estimate_jobs(make_plan(dry_run=True))) == 4  # a dry run estimates a few, to keep CI quick


def _row(part, cell) -> str:
    """The line a worker appends for the cell (bench.store's format)."""
    spec = CellSpec(variant=cell.variant.as_dict(), size=part.size, batch=part.batch, device="cpu")
    return json.dumps(base_result(spec, "ok", kind="estimate").to_dict()) + "\n"


def test_collect_stops_late_workers_and_keeps_only_complete_rows(tmp_path):
    plan = make_plan(dry_run=True)
    jobs = estimate_jobs(plan)
    # Worker 0 finished its first two cells and was killed while writing the third.
    path = _result_file(tmp_path, jobs[0][0].size, 0)
    path.parent.mkdir(parents=True)
    path.write_text(_row(*jobs[0]) + _row(*jobs[1]) + _row(*jobs[2])[:20])
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    workers = EstimateWorkers(tmp_path, plan, [sleeper], started=time.monotonic())
    started = time.monotonic()
    done, complete, notes = workers.collect(deadline=time.monotonic() + 0.5)
    assert time.monotonic() - started < 10 and sleeper.returncode is not None  # stopped at the deadline
    assert done == 2 and not complete and workers.collected
    assert not _worker_dir(tmp_path).exists()  # merged rows are kept once
    merged = (tmp_path / "results" / f"estimate-{jobs[0][0].size}.jsonl").read_text().splitlines()
    assert [json.loads(line)["variant_key"] for line in merged] == [jobs[0][1].key, jobs[1][1].key]
    missing = next(n for n in notes if n.startswith("not estimated in time"))
    assert f"{len(jobs) - 2} cells" in missing and f"{jobs[2][1].key}@" in missing
    assert not any(n.startswith("estimate workers") for n in notes)  # killed at the deadline is no failure


def test_a_worker_that_fails_is_named(tmp_path):
    failing = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], start_new_session=True)
    _, complete, notes = EstimateWorkers(tmp_path, make_plan(dry_run=True), [failing]).collect(time.monotonic() + 30)
    assert not complete
    assert "estimate workers [0] failed" in notes[0]


def test_with_every_cell_part_skipped_no_estimate_is_started(tmp_path):
    from bench import gpu_check

    plan = make_plan(dry_run=True)
    skips = [arg for name in ("probe", "report", *(p.name for p in plan.cell_parts)) for arg in ("--skip", name)]
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path), *skips]) == 0
    (estimate,) = [p for p in json.loads((tmp_path / "parts.json").read_text())["parts"] if p["name"] == "estimate"]
    assert estimate["status"] == "skipped" and "no cell part ran" in estimate["notes"][0]
    assert not (tmp_path / "results" / "estimates").exists()


def test_an_earlier_runs_worker_files_are_not_merged(tmp_path, monkeypatch):
    from bench import gpu_estimates

    real_popen = subprocess.Popen
    # Workers that estimate nothing: only what start() does before spawning them is under test.
    monkeypatch.setattr(gpu_estimates.subprocess, "Popen",
                        lambda command, **kwargs: real_popen([sys.executable, "-c", "pass"], **kwargs))
    plan = make_plan(dry_run=True)
    stale = _result_file(tmp_path, "tiny", 0)
    stale.parent.mkdir(parents=True)
    stale.write_text(_row(*estimate_jobs(plan)[0]))
    workers = EstimateWorkers.start(plan, tmp_path, {}, "", tmp_path / "logs")
    done, complete, notes = workers.collect(deadline=time.monotonic() + 60)
    assert done == 0 and not complete and not (tmp_path / "results" / "estimate-tiny.jsonl").exists()
