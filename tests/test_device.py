import pytest
import torch

from napari_cryo.device import describe_device, resolve_device
from napari_cryo.errors import CryoInputError


def test_auto_picks_cuda_only_when_present():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected


def test_explicit_cpu():
    device = resolve_device("CPU")
    assert device == torch.device("cpu")
    assert describe_device(device).startswith("cpu")


def test_bad_names_are_clear():
    with pytest.raises(CryoInputError, match="not a torch device"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_missing_is_clear():
    with pytest.raises(CryoInputError, match="CUDA is not available"):
        resolve_device("cuda")
