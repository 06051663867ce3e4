"""make_current: an indexed CUDA device becomes the current one; CPU and a bare "cuda" change nothing."""

import pytest
import torch

from models import make_current


@pytest.mark.parametrize("device, expected", [("cpu", []), ("cuda", []), ("cuda:1", [torch.device("cuda", 1)]),
                                              (torch.device("cuda", 0), [torch.device("cuda", 0)])])
def test_only_an_indexed_cuda_device_is_made_current(monkeypatch, device, expected):
    calls = []
    # Recorded rather than called: there is no GPU here, and torch 2.11 raises for a device with no index.
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    make_current(device)
    assert calls == expected
