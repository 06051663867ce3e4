"""ablations.loading: worker processes read the same batches, in the same order, as the training and
evaluation processes read them alone, and a bad training item gives way to the next good one."""

from types import SimpleNamespace

import pytest
import torch

from ablations.data.errors import DataError
from ablations.loading import NextGood, StepBatches, loader
from ablations.train import TrainConfig, batch_indices, train
from ablations.zeroshot import encode_volumes
from tests.ablations.test_train import _dataset, _model, _tokenize


def test_workers_yield_the_batches_each_step_draws_in_step_order():
    items = [f"volume {i}" for i in range(23)]  # 23: every epoch drops an incomplete tail

    def indices_of(step):
        return batch_indices(len(items), 4, step, seed=2)

    # Steps 3-8 (as a run resumed at step 3 reads them) cross an epoch boundary (5 steps per epoch).
    expected = [[items[i] for i in indices_of(step)] for step in range(3, 9)]
    for workers in (0, 2):
        assert list(loader(items, StepBatches(indices_of, 3, 9), workers=workers)) == expected
    in_order = [items[i:i + 5] for i in range(0, 23, 5)]  # the last batch holds the 3 left over
    assert list(loader(items, batch=5, workers=2)) == in_order


def test_training_with_loader_workers_matches_training_in_process():
    data, tok = _dataset(), _tokenize()
    cfg = TrainConfig(steps=3, batch=4, lr=1e-3, warmup_steps=1, checkpoint_every=0, seed=0)
    alone = train(_model(), data, tok, cfg, None, progress=False)
    ahead = train(_model(), data, tok, cfg, None, progress=False, workers=2)
    assert [c["loss"] for c in ahead.loss_curve] == [c["loss"] for c in alone.loss_curve]


def test_encoding_with_loader_workers_matches_encoding_in_process():
    data = [SimpleNamespace(volume=item.volume, labels=torch.tensor([i % 2, 1.0]), name=f"v{i}")
            for i, item in enumerate(_dataset(7))]
    data[3] = None  # a volume the loader skipped (--skip-bad)
    model = _model().eval()
    alone, ahead = (encode_volumes(model, data, batch=3, workers=w) for w in (0, 2))
    assert torch.equal(alone[0], ahead[0]) and (alone[1] == ahead[1]).all()
    assert alone[2] == ahead[2] == ["v0", "v1", "v2", "v4", "v5", "v6"]


def test_a_bad_training_item_gives_way_to_the_next_good_one():
    items = NextGood(["a", None, None, "d", None])
    assert [items[i] for i in range(5)] == ["a", "d", "d", "d", "a"]  # the last wraps around to the first
    with pytest.raises(RuntimeError, match="are all bad"):
        NextGood([None] * 3, attempts=3)[0]


class _Broken(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        raise DataError(f"/data/volume_{index}.nii.gz", "cannot read the NIfTI volume", "re-download it")


def test_a_data_error_in_a_worker_reaches_the_main_process_as_a_data_error():
    with pytest.raises(DataError) as caught:
        list(loader(_Broken(), batch=1, workers=1))
    assert str(caught.value) == "/data/volume_0.nii.gz: cannot read the NIfTI volume; re-download it"
