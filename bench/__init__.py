"""Measurement: matrix designs, one isolated process per cell, timers, memory, FLOPs, dry-run estimates.

    python -m bench.run --matrix                        # CPU: tiny size, paper design; GPU: paper size
    python -m bench.run --matrix --design ofat --size tiny --out results
    python -m bench.run --config configs/cpu-report.yaml --resume
    python -m bench.estimate --size paper --design paper   # FakeTensorMode: memory and FLOPs, no GPU

Modules, one thing each:
    result.py       the versioned result schema (`Result`, `StageStats`, `Memory`): the contract with reports/
    design.py       paper / ofat / loo / full designs and the --only / --exclude / --precision filters
    run.py          the `bench.run` command line; config.py reads every flag from YAML too
    runner.py       the sweep: a subprocess per cell, timeout, outcome classification, append as it goes
    cell.py         one cell in its process (`python -m bench.cell SPEC RESULT`): build, warm up, time, account
    step.py         the training step split into stages with marks at the boundaries
    timers.py       perf_counter / CUDA-event stage timers and statistics
    memory.py       saved-for-backward, parameter/gradient/optimizer bytes, RSS, CUDA allocator and NVML
    flops.py        FlopCounterMode fixes (CPU flash SDPA, grouped conv backward), peak table, MFU
    environment.py  versions, device, clocks and throttle reasons, git SHA and dirty flag
    store.py        JSONL append / tolerant read / repair, and the CSV beside it
    table.py        the terminal table with deltas against the baseline
    estimate.py     the `bench.estimate` command line
    faults.py       the test-only fault switch CTCLIP_BENCH_FAULT (oom, crash, hang, raise)
"""
