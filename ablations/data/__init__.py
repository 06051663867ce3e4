"""CT data for the ablations: synthetic chest-CT phantoms, the CT-RATE loader, and WebDataset shards.

Entry points (each has --help):
  python -m ablations.data.synthetic   generate a synthetic CT-RATE tree
  python -m ablations.data.ctrate      check a CT-RATE tree by loading every volume
  python -m ablations.data.prepare     preprocess a tree once into WebDataset shards
  python -m ablations.data.bench_preprocess   preprocessing throughput, volumes/s/core
"""
