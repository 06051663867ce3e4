"""How training and evaluation read their samples: in this process, or in DataLoader worker processes
that decode and resample the next volumes while the model computes, in the same order either way.

From `.nii.gz` a paper-size volume takes ~4 s of one core (ablations/data/README.md), so a batch of 16
read in the training process costs over a minute a step; `workers` processes read ahead of the step.
Which samples a step sees stays a pure function of (seed, step, rank) (train.batch_indices), so a run
resumed from a checkpoint reads the same batches whatever the worker count.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Sampler

log = logging.getLogger(__name__)


class StepBatches(Sampler[list[int]]):
    """The indices of steps `start` .. `steps - 1`, each drawn by `indices_of(step)`."""

    def __init__(self, indices_of: Callable[[int], list[int]], start: int, steps: int) -> None:
        self.indices_of, self.start, self.steps = indices_of, start, steps

    def __iter__(self) -> Iterator[list[int]]:
        return (self.indices_of(step) for step in range(self.start, self.steps))

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


def _as_list(samples: list) -> list:
    return samples


def loader(dataset: Sequence, batches: "Sampler[list[int]] | None" = None, batch: int = 1,
           workers: int = 0) -> DataLoader:
    """Lists of samples, by `batches` (one list of indices per step) or else `batch` at a time in order.

    With `workers` > 0, that many processes read ahead (two batches each); 0 reads in this process.
    """
    options = {"num_workers": workers, "collate_fn": _as_list}
    if workers > 0:
        options["prefetch_factor"] = 2
    if batches is not None:
        return DataLoader(dataset, batch_sampler=batches, **options)  # type: ignore[arg-type]
    return DataLoader(dataset, batch_size=batch, shuffle=False, **options)  # type: ignore[arg-type]


class NextGood(torch.utils.data.Dataset):
    """A training set whose bad items (None: a volume the loader skipped, `--skip-bad`) are replaced by
    the next good one, so every step keeps its batch size (every rank must send as many latents to
    the contrastive loss). Deterministic: the same index always gives the same sample."""

    def __init__(self, dataset: Sequence, attempts: int = 16) -> None:
        self.dataset, self.attempts = dataset, attempts

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        for offset in range(self.attempts):
            sample = self.dataset[(index + offset) % len(self.dataset)]
            if sample is not None:
                if offset:
                    log.warning("training item %d is bad; using item %d in its place", index,
                                (index + offset) % len(self.dataset))
                return sample
        raise RuntimeError(f"items {index} to {index + self.attempts - 1} of the training set are all bad; "
                           "check the data with `python -m ablations.data.ctrate --src DIR --split train`")
