"""Simulate a particle stack from a 3D map, with RELION STAR files and the true poses kept apart.

The core of ``napari-cryo simulate particles``: it writes ``DIR/particles.mrcs`` (streamed: memory does not grow with N),
``DIR/particles.star`` (RELION 3.1+, CTF but no poses: the input for ab
initio reconstruction), ``DIR/ground_truth.star`` (the same rows with the
true ``rlnAngleRot/Tilt/Psi`` and ``rlnOriginX/YAngst``) and
``DIR/ground_truth_map.mrc`` (the map as projected, at the box size).

Images are formed in Fourier space (:mod:`.physics`): uniformly random
rotations, the central slice of the map (padded twice), RELION's CTF with
lognormal defocus and up to 5 % astigmatism, the origin shift, and white
Gaussian noise at the stated SNR (variance of the clean CTF-modulated image
over the whole box / noise variance).  The map is Fourier-cropped or padded
to the box, so the pixel size becomes ``map pixel · map size / box``, and
its border mean is subtracted first so that padding adds no edges.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import CryoInputError
from ..tasks import Progress

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Files written into the output directory.
OUTPUT_FILES = ("particles.mrcs", "particles.star", "ground_truth.star", "ground_truth_map.mrc")


@dataclass
class SimulationSettings:
    """What :func:`simulate_dataset` makes (units: Å, kV, mm, degrees)."""

    n: int
    box: int | None = None
    snr: float = 0.1
    shift_sigma: float = 0.0
    defocus_median: float = 20000.0
    defocus_sigma: float = 0.3
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.1
    ctf: bool = True
    seed: int = 0
    pixel_size: float | None = None
    chunk: int = 256

    def check(self) -> None:
        """Raise CryoInputError for values that cannot work."""
        if self.n < 1:
            raise CryoInputError(None, f"--n must be at least 1, got {self.n}")
        if self.box is not None and (self.box < 8 or self.box % 2):
            raise CryoInputError(None, f"--box must be an even number of pixels, at least 8, got {self.box}")
        if not self.snr > 0:
            raise CryoInputError(None, f"--snr must be positive (inf for no noise), got {self.snr}")
        if not (self.shift_sigma >= 0 and math.isfinite(self.shift_sigma)):
            raise CryoInputError(None, f"--shift-sigma must be zero or positive, got {self.shift_sigma}")
        if not self.defocus_median > 0 or not self.defocus_sigma >= 0:
            raise CryoInputError(None, "--defocus-median must be positive and --defocus-sigma not negative")
        if not self.voltage > 0 or not self.cs >= 0:
            raise CryoInputError(None, "--voltage must be positive and --cs not negative")
        if not 0 <= self.amplitude_contrast < 1:
            raise CryoInputError(None, f"--amplitude-contrast must be in [0, 1), got {self.amplitude_contrast}")
        if self.pixel_size is not None and not self.pixel_size > 0:
            raise CryoInputError(None, f"--pixel-size must be positive, got {self.pixel_size}")


def read_map(path: str | Path, pixel_size: float | None = None) -> tuple[np.ndarray, float]:
    """A cubic 3D map as float32 and its pixel size, or a CryoInputError naming the file."""
    from ..io.mrc import read_mrc

    path = Path(path)
    data, info = read_mrc(path)
    if info.kind != "volume" or len(set(info.shape)) != 1:
        raise CryoInputError(path, f"is not a cubic 3D map (it is a {info.kind} of shape {'x'.join(map(str, info.shape))})")
    volume = np.array(data, dtype=np.float32)
    if not np.isfinite(volume).all():
        raise CryoInputError(path, "contains NaN or infinite values")
    px = float(pixel_size) if pixel_size else info.pixel_size
    if not px > 0:
        raise CryoInputError(path, "has no pixel size in its header; give --pixel-size")
    return volume, px


def _border_mean(volume: np.ndarray, width: int = 2) -> float:
    inner = volume[width:-width, width:-width, width:-width]
    return float((volume.sum(dtype=np.float64) - inner.sum(dtype=np.float64)) / (volume.size - inner.size))


def simulate_dataset(
    volume: np.ndarray,
    pixel_size: float,
    out_dir: str | Path,
    settings: SimulationSettings,
    overwrite: bool = False,
    device: torch.device | None = None,
) -> Generator[Progress, None, dict]:
    """Simulate particles from a map and write the four files (a progress generator).

    Parameters
    ----------
    volume : numpy.ndarray
        (L, L, L) map, ZYX, centre ``L // 2``.
    pixel_size : float
        Its Å per voxel.
    out_dir : str or pathlib.Path
        Output directory (created).
    settings : SimulationSettings
    overwrite : bool
        Replace existing files.
    device : torch.device, optional
        Where to compute (default CPU).

    Yields
    ------
    Progress

    Returns
    -------
    dict
        ``n``, ``box``, ``pixel_size`` and the paths written.
    """
    import pandas as pd
    import torch

    from ..geometry import euler_to_matrix
    from ..io.atomic import atomic_path, check_outputs
    from ..io.mrc import write_mrc
    from ..io.star import write_star
    from ..synthetic.structures import random_rotations
    from .physics import central_slices, ctf_2d, fourier_crop_volume, shift_images, volume_to_fourier

    settings.check()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CryoInputError(out, "exists and is not a directory")
    size = volume.shape[0]
    box = settings.box or size
    if box % 2:
        raise CryoInputError(None, f"the box must be even; the map is {size} pixels, give an even --box")
    # Every output is checked before the first is written (the output-folder policy).
    paths = dict(zip(OUTPUT_FILES, check_outputs([out / name for name in OUTPUT_FILES], overwrite=overwrite)))
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu") if device is None else device
    px = pixel_size * size / box
    vol = torch.as_tensor(volume, dtype=torch.float32) - _border_mean(volume)
    vol = fourier_crop_volume(vol, box)
    write_mrc(paths["ground_truth_map.mrc"], vol.numpy(), px, overwrite=overwrite)
    volume_ft = volume_to_fourier(vol.to(device), pad=2)

    n = settings.n
    rng = np.random.default_rng(settings.seed)
    angles = random_rotations(rng, n)
    matrices = euler_to_matrix(angles)
    origins = rng.normal(0.0, settings.shift_sigma, (n, 2)) if settings.shift_sigma > 0 else np.zeros((n, 2))
    origins = origins.round(3)
    defocus = settings.defocus_median * np.exp(rng.normal(0.0, settings.defocus_sigma, n))
    astig = rng.uniform(0.0, 0.05, n) * defocus
    ctf_table = {
        "defocus_u": (defocus + astig).round(2),
        "defocus_v": (defocus - astig).round(2),
        "defocus_angle": rng.uniform(-180.0, 180.0, n).round(3),
    }
    subset = rng.integers(1, 3, n)

    total = [0.0, 0.0, math.inf, -math.inf]  # sum, sum of squares, min, max
    with atomic_path(paths["particles.mrcs"], overwrite=overwrite) as tmp:
        offset = _new_stack(tmp, n, box, px)
        with open(tmp, "r+b") as fh:
            for start in range(0, n, settings.chunk):
                stop = min(n, start + settings.chunk)
                rot = torch.as_tensor(matrices[start:stop], dtype=torch.float32, device=device)
                spectra = central_slices(volume_ft, rot, pad=2)
                if settings.ctf:
                    params = {k: v[start:stop] for k, v in ctf_table.items()}
                    params.update(voltage=settings.voltage, cs=settings.cs, amplitude_contrast=settings.amplitude_contrast)
                    spectra = spectra * ctf_2d(params, box, px, device=device)
                spectra = shift_images(spectra, torch.as_tensor(origins[start:stop] / px, dtype=torch.float32, device=device), box)
                clean = torch.fft.irfft2(spectra, s=(box, box)).cpu().numpy().astype(np.float64)
                images = clean
                if math.isfinite(settings.snr):
                    sigma = np.sqrt(np.maximum(clean.var(axis=(1, 2)), 1e-30) / settings.snr)
                    images = clean + rng.standard_normal(clean.shape) * sigma[:, None, None]
                images = images.astype("<f4")
                fh.seek(offset + start * box * box * 4)
                fh.write(images.tobytes())
                total[0] += float(images.sum(dtype=np.float64))
                total[1] += float(np.square(images, dtype=np.float64).sum())
                total[2] = min(total[2], float(images.min()))
                total[3] = max(total[3], float(images.max()))
                yield Progress(stop, n, "projecting")
        _finish_stack(tmp, n * box * box, total)

    names = [f"{i + 1:06d}@particles.mrcs" for i in range(n)]
    table = pd.DataFrame({"rlnImageName": names, "rlnMicrographName": ["synthetic.mrc"] * n})
    if settings.ctf:
        table["rlnDefocusU"] = ctf_table["defocus_u"]
        table["rlnDefocusV"] = ctf_table["defocus_v"]
        table["rlnDefocusAngle"] = ctf_table["defocus_angle"]
        table["rlnPhaseShift"] = np.zeros(n)
    table["rlnOpticsGroup"] = np.ones(n, dtype=int)
    table["rlnRandomSubset"] = subset
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnAmplitudeContrast": [settings.amplitude_contrast],
            "rlnSphericalAberration": [settings.cs],
            "rlnVoltage": [settings.voltage],
            "rlnImagePixelSize": [px],
            "rlnImageSize": [box],
            "rlnImageDimensionality": [2],
            "rlnCtfDataAreCtfPremultiplied": [0],
        }
    )
    truth = table.copy()
    truth["rlnAngleRot"] = angles[:, 0]
    truth["rlnAngleTilt"] = angles[:, 1]
    truth["rlnAnglePsi"] = angles[:, 2]
    truth["rlnOriginXAngst"] = origins[:, 0]
    truth["rlnOriginYAngst"] = origins[:, 1]
    for name, rows in (("particles.star", table), ("ground_truth.star", truth)):
        write_star({"optics": optics, "particles": rows}, paths[name], overwrite=overwrite)
    return {"n": n, "box": box, "pixel_size": px, "files": {k: str(v) for k, v in paths.items()}}


def _new_stack(path: Path, n: int, box: int, pixel_size: float) -> int:
    """Create an empty float32 image stack (its space reserved on disk); return the data's byte offset."""
    import warnings

    import mrcfile

    from ..io.atomic import reserve_space

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with mrcfile.new_mmap(path, shape=(n, box, box), mrc_mode=2, overwrite=True) as mrc:
            mrc.header.ispg = 0  # a stack of images
            # The cell of a stack spans one image in Z, as RELION writes it.
            mrc.header.mx, mrc.header.my, mrc.header.mz = box, box, 1
            mrc.header.cella = (pixel_size * box, pixel_size * box, pixel_size)
            offset = int(mrc.header.nbytes + mrc.header.nsymbt)
    reserve_space(path)  # the images are written through a memory map: a full disk must fail here, not with SIGBUS
    return offset


def _finish_stack(path: Path, count: int, total: list[float]) -> None:
    """Write the statistics gathered while streaming into the header (without reading the data)."""
    import mrcfile

    mean = total[0] / count
    var = max(total[1] / count - mean**2, 0.0)
    with mrcfile.mmap(path, mode="r+") as mrc:
        mrc.header.dmin, mrc.header.dmax = total[2], total[3]
        mrc.header.dmean, mrc.header.rms = mean, math.sqrt(var)


