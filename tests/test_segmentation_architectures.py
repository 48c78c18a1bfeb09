"""The segmentation architecture registry and the builtin networks."""

from __future__ import annotations

import importlib.metadata
import io
import warnings

import pytest
import torch
import torch.nn as nn

from napari_cryo.errors import CryoInputError
from napari_cryo.segmentation import architectures
from napari_cryo.segmentation.architectures import Architecture

BUILTINS = ("vgg", "unet", "resnet", "inception", "pix2pix")


def _tiny_arch(name: str) -> Architecture:
    return Architecture(name=name, title="Tiny", description="A one-layer test network.", build=lambda box: nn.Conv2d(1, 1, 3, padding=1))


def _disc(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A noisy bright disc and its mask, as a (1, 1, size, size) image and target."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 4) ** 2).float()[None, None]
    gen = torch.Generator().manual_seed(0)
    image = mask + 0.3 * torch.randn(mask.shape, generator=gen)
    return (image - image.mean()) / image.std(), mask


@pytest.fixture(autouse=True)
def _clean_registry():
    yield
    for name in ("tinynet", "plugged", "broken"):
        architectures.unregister(name)


TORCH_THREADS = 1


def test_builtins_available_default_first():
    names = list(architectures.available())
    assert names[: len(BUILTINS)] == list(BUILTINS)
    assert names[0] == architectures.DEFAULT == "vgg"
    for name in BUILTINS:
        arch = architectures.get(name)
        assert arch.name == name and arch.dims == 2 and arch.title and arch.description


@pytest.mark.parametrize("name", BUILTINS)
def test_lookup_is_case_insensitive(name):
    assert architectures.get(name.upper()) is architectures.get(f" {name.title()} ") is architectures.get(name)


@pytest.mark.parametrize("name", BUILTINS)
def test_output_shape_and_finite(name):
    torch.manual_seed(0)
    net = architectures.get(name).build(64).eval()
    with torch.inference_mode():
        for shape in [(2, 1, 64, 64), (1, 1, 96, 128), (1, 1, 50, 70)]:
            y = net(torch.randn(shape))
            assert y.shape == shape
            assert torch.isfinite(y).all()
        # Starts near a small foreground prior rather than at 0.5.
        p = torch.sigmoid(net(torch.randn(1, 1, 64, 64))).mean().item()
    assert 0.05 < p < 0.4


@pytest.mark.parametrize("name", BUILTINS)
def test_state_dict_round_trip(name):
    # Model files store only the name, the box size and a state dict.
    arch = architectures.get(name)
    torch.manual_seed(0)
    net = arch.build(64).eval()
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    torch.manual_seed(1)
    other = arch.build(64)
    other.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    x = torch.randn(1, 1, 64, 64)
    with torch.inference_mode():
        assert torch.equal(net(x), other.eval()(x))


@pytest.mark.parametrize("name", BUILTINS)
def test_overfits_a_single_example(name):
    torch.manual_seed(0)
    net = architectures.get(name).build(32).train()
    image, mask = _disc(32)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss_fn = nn.BCEWithLogitsLoss()
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(net(image), mask)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("box", [32, 48, 64, 256])
def test_valid_box_sizes(box):
    assert isinstance(architectures.get("vgg").build(box), nn.Module)


@pytest.mark.parametrize("box", [0, 16, 40, 63])
def test_bad_box_size_is_an_input_error(box):
    for name in BUILTINS:
        with pytest.raises(CryoInputError, match="multiple of 16"):
            architectures.get(name).build(box)


def test_pix2pix_discriminator_gives_a_patch_map():
    arch = architectures.get("pix2pix")
    assert arch.adversarial and not architectures.get("vgg").adversarial
    disc = arch.discriminator(64)
    image, mask = _disc(64)
    out = disc(torch.cat([image, mask], dim=1).expand(3, -1, -1, -1))
    assert out.ndim == 4 and out.shape[:2] == (3, 1)
    assert 1 < out.shape[-1] < 64 and out.shape[-2] == out.shape[-1]
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="2, H, W"):
        disc(image)


def test_unknown_name_lists_available():
    with pytest.raises(CryoInputError, match="unknown architecture 'nosuchnet'") as info:
        architectures.get("nosuchnet")
    assert all(name in str(info.value) for name in BUILTINS)
    assert info.value.path is None


def test_register_adds_an_architecture():
    with pytest.raises(CryoInputError):
        architectures.get("tinynet")
    architectures.register(_tiny_arch("tinynet"))
    assert architectures.get("TinyNet").title == "Tiny"
    assert "tinynet" in architectures.available()
    assert architectures.get("tinynet").build(64)(torch.zeros(1, 1, 32, 32)).shape == (1, 1, 32, 32)


def test_register_refuses_builtin_names_and_non_architectures():
    with pytest.raises(CryoInputError, match="builtin"):
        architectures.register(_tiny_arch("vgg"))
    with pytest.raises(TypeError):
        architectures.register("tinynet")  # type: ignore[arg-type]
    assert architectures.get("vgg").title == "VGGNet encoder-decoder"


@pytest.mark.parametrize("name", ["", "VGG", "my net", " x"])
def test_architecture_names_must_be_lower_case_words(name):
    with pytest.raises(ValueError, match="lower-case"):
        _tiny_arch(name)


class _FakeEntryPoint:
    def __init__(self, name: str, load):
        self.name, self.value, self._load = name, f"fake_pkg:{name}", load

    def load(self):
        return self._load()


def _raise():
    raise ImportError("no module named fake_pkg")


def test_entry_points_are_honoured_and_broken_ones_skipped(monkeypatch):
    groups = []

    def fake_entry_points(**kwargs):
        groups.append(kwargs.get("group"))
        return [
            _FakeEntryPoint("plugged", lambda: _tiny_arch("plugged")),
            _FakeEntryPoint("broken", _raise),
            _FakeEntryPoint("shadow", lambda: _tiny_arch("vgg")),
            _FakeEntryPoint("notarch", lambda: object()),
        ]

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = architectures.available()
    assert groups == [architectures.ENTRY_POINT_GROUP]
    assert "plugged" in names and "broken" not in names
    assert names["vgg"] is architectures.get("vgg") and names["vgg"].title != "Tiny"
    messages = [str(w.message) for w in caught]
    assert any("'broken'" in m and "ImportError" in m for m in messages), messages
    assert any("'shadow'" in m and "builtin" in m for m in messages), messages
    assert any("'notarch'" in m for m in messages), messages
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert architectures.get("Plugged").title == "Tiny"
        # A runtime registration wins over a plugin of the same name.
        architectures.register(Architecture("plugged", "Mine", "Registered.", lambda box: nn.Identity()))
        assert architectures.get("plugged").title == "Mine"


def test_failing_entry_point_listing_does_not_break_registry(monkeypatch):
    def boom(**kwargs):
        raise RuntimeError("corrupt metadata")

    monkeypatch.setattr(importlib.metadata, "entry_points", boom)
    with pytest.warns(UserWarning, match="corrupt metadata"):
        assert list(architectures.available())[: len(BUILTINS)] == list(BUILTINS)


def _without_leak(data: bytes) -> bytes:
    """A model file as written before its network had a leak: the same archive minus that buffer."""
    import zipfile

    src = zipfile.ZipFile(io.BytesIO(data))
    state = torch.load(io.BytesIO(src.read("weights.pt")), weights_only=True)
    assert "inner.leak" in state
    weights = io.BytesIO()
    torch.save({k: v for k, v in state.items() if k != "inner.leak"}, weights)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, weights.getvalue() if name == "weights.pt" else src.read(name))
    return out.getvalue()


#: The norm layer of the block the head reads, per architecture whose head reads a leaky activation.
LAST_NORM = {"vgg": lambda net: net.decoder[-1], "unet": lambda net: net.dec1[-1], "inception": lambda net: net.dec1.norm}


@pytest.mark.parametrize("name", sorted(LAST_NORM))
def test_the_block_before_the_head_is_leaky_and_old_files_keep_their_relu(name):
    from napari_cryo.segmentation.model import SegmentationModel

    torch.manual_seed(0)
    model = SegmentationModel.new(name, "particle", box_size=32, pixel_size=10.0, context=3)
    inner = model.net.inner
    # Every unit of the last block below zero: the ReLU network answers its head's bias everywhere
    # (the ceiling a model can get stuck at); the leaky one still sees the image.
    with torch.no_grad():
        LAST_NORM[name](inner).bias.fill_(-100.0)
    x = torch.randn(2, 3, 32, 32)
    model.net.eval()
    with torch.no_grad():
        leaky = model.net(x)
        assert float(inner.leak) == pytest.approx(0.1) and leaky.std() > 1e-3
        reloaded = SegmentationModel.from_bytes(model.to_bytes())
        torch.testing.assert_close(reloaded.net(x), leaky)
        old = SegmentationModel.from_bytes(_without_leak(model.to_bytes()), "old.scnm")
        assert float(old.net.inner.leak) == 0.0
        flat = old.net(x)
        torch.testing.assert_close(flat, torch.full_like(flat, float(inner.head.bias)))

