"""Image formation (CTF, central slices, shifts, resampling), FSC, map superposition and pose comparison."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from napari_cryo.geometry import euler_to_matrix, matrix_to_euler
from napari_cryo.reconstruction import physics
from napari_cryo.reconstruction.fsc import align_maps, fsc, plot_fsc, soft_mask, uniform_rotations
from napari_cryo.reconstruction.poses import rotation_angles, rotation_errors, shift_errors
from napari_cryo.synthetic.structures import atoms_to_volume, project_atoms, random_rotations, random_structure

MIRROR = np.diag([1.0, 1.0, -1.0])


TORCH_THREADS = 1


# -- CTF: an independent transcription of RELION's CTF::initialise / getCTF (src/ctf.cpp, src/ctf.h)


def relion_ctf(box, angpix, defocus_u, defocus_v, azimuth, kv, cs, q0, phase_shift=0.0, bfac=0.0):
    local_cs = cs * 1e7
    local_kv = kv * 1e3
    rad_azimuth = math.radians(azimuth)
    defocus_average = -(defocus_u + defocus_v) * 0.5
    defocus_deviation = -(defocus_u - defocus_v) * 0.5
    lam = 12.2643247 / math.sqrt(local_kv * (1.0 + local_kv * 0.978466e-6))
    k1 = math.pi / 2 * 2 * lam
    k2 = math.pi / 2 * local_cs * lam**3
    k3 = math.atan(q0 / math.sqrt(1 - q0 * q0))
    k4 = -bfac / 4.0
    k5 = math.radians(phase_shift)
    out = np.empty((box, box // 2 + 1))
    for i in range(box):
        ip = i if i < box // 2 else i - box  # FOR_ALL_ELEMENTS_IN_FFTW_TRANSFORM2D
        for j in range(box // 2 + 1):
            x, y = j / (box * angpix), ip / (box * angpix)
            u2 = x * x + y * y
            deltaf = 0.0 if (x == 0 and y == 0) else defocus_average + defocus_deviation * math.cos(2 * (math.atan2(y, x) - rad_azimuth))
            argument = k1 * deltaf * u2 + k2 * u2 * u2 - k5 - k3
            out[i, j] = -math.sin(argument) * math.exp(k4 * u2)
    return out


@pytest.mark.parametrize(
    "params",
    [
        dict(defocus_u=15000.0, defocus_v=12000.0, defocus_angle=30.0, voltage=300.0, cs=2.7, amplitude_contrast=0.1),
        dict(defocus_u=25000.0, defocus_v=25500.0, defocus_angle=-70.0, voltage=200.0, cs=2.0, amplitude_contrast=0.07, phase_shift=45.0, bfactor=50.0),
    ],
)
def test_ctf_matches_relion(params):
    box, px = 48, 1.7
    ours = physics.ctf_2d(params, box, px).numpy()
    assert ours.shape == (1, box, box // 2 + 1) and ours.dtype == np.float32
    ref = relion_ctf(box, px, params["defocus_u"], params["defocus_v"], params["defocus_angle"], params["voltage"], params["cs"],
                     params["amplitude_contrast"], params.get("phase_shift", 0.0), params.get("bfactor", 0.0))
    np.testing.assert_allclose(ours[0], ref, atol=2e-4)


def test_ctf_sign_and_golden_value():
    # RELION's CTF is -sin(gamma) with gamma = -chi: +sin(chi), positive at low frequency
    # (RELION works with contrast-inverted, white particles).  DC is +Q.
    p = dict(defocus_u=20000.0, defocus_v=20000.0, defocus_angle=0.0, voltage=300.0, cs=2.7, amplitude_contrast=0.1)
    box, px = 100, 0.5  # column 5 is 0.1 1/Å... column j is j / 50 1/Å
    ctf = physics.ctf_2d(p, box, px)[0].numpy()
    assert ctf[0, 0] == pytest.approx(0.1, abs=1e-6)
    assert ctf[0, 1] > 0.1  # first lobe rises towards +1
    lam = 12.2643247 / math.sqrt(300e3 * (1 + 300e3 * 0.978466e-6))
    k = 2 / 50.0
    chi = math.pi * lam * 20000 * k**2 - math.pi / 2 * 2.7e7 * lam**3 * k**4 + math.asin(0.1)
    assert chi > 0
    assert ctf[0, 2] == pytest.approx(math.sin(chi), abs=1e-5)
    assert lam == pytest.approx(0.019687, abs=1e-6)


def test_ctf_astigmatism_axes_and_swap():
    box, px = 64, 1.2
    base = dict(voltage=300.0, cs=2.7, amplitude_contrast=0.1)
    astig = physics.ctf_2d(dict(base, defocus_u=18000.0, defocus_v=12000.0, defocus_angle=0.0), box, px)[0]
    iso_u = physics.ctf_2d(dict(base, defocus_u=18000.0, defocus_v=18000.0, defocus_angle=0.0), box, px)[0]
    iso_v = physics.ctf_2d(dict(base, defocus_u=12000.0, defocus_v=12000.0, defocus_angle=0.0), box, px)[0]
    # Angle 0: U along X (row 0 of the rfft grid), V along Y (column 0).
    torch.testing.assert_close(astig[0, :], iso_u[0, :], atol=1e-5, rtol=0)
    torch.testing.assert_close(astig[:, 0], iso_v[:, 0], atol=1e-5, rtol=0)
    # Turning the angle by 90° swaps U and V.
    a = physics.ctf_2d(dict(base, defocus_u=18000.0, defocus_v=12000.0, defocus_angle=37.0), box, px)
    b = physics.ctf_2d(dict(base, defocus_u=12000.0, defocus_v=18000.0, defocus_angle=127.0), box, px)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_ctf_batches_broadcasts_and_differentiates():
    du = torch.tensor([15000.0, 20000.0, 25000.0], requires_grad=True)
    params = {"defocus_u": du, "defocus_v": du - 500, "defocus_angle": np.array([0.0, 45.0, 90.0]),
              "voltage": 300.0, "cs": 2.7, "amplitude_contrast": 0.1, "bfactor": 20.0}
    ctf = physics.ctf_2d(params, 32, 2.0)
    assert ctf.shape == (3, 32, 17)
    ctf.square().sum().backward()
    assert du.grad is not None and torch.all(du.grad != 0)
    no_b = physics.ctf_2d(dict(params, bfactor=0.0), 32, 2.0)
    k2 = physics.radial_frequency(32, 2.0) ** 2
    torch.testing.assert_close(ctf.detach(), no_b.detach() * torch.exp(-20.0 * k2 / 4), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="lack defocus_v"):
        physics.ctf_2d({"defocus_u": 1.0}, 8, 1.0)


# -- central slices


def blob_volume(positions, amplitudes, sigma, box):
    c = box // 2
    z, y, x = np.meshgrid(*[np.arange(box) - c] * 3, indexing="ij")
    vol = np.zeros((box,) * 3)
    for a, p in zip(amplitudes, positions):
        vol += a * np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * sigma**2))
    return vol.astype(np.float32)


def blob_projection(positions, amplitudes, sigma, box, a_matrix):
    """Analytic ∫ V(Aᵀ r) dz of Gaussian blobs: each lands at (A p)_xy, weight a·√(2π)·σ."""
    c = box // 2
    y, x = np.meshgrid(np.arange(box) - c, np.arange(box) - c, indexing="ij")
    img = np.zeros((box, box))
    for a, p in zip(amplitudes, positions @ a_matrix.T):
        img += a * math.sqrt(2 * math.pi) * sigma * np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2) / (2 * sigma**2))
    return img


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    positions = rng.normal(size=(6, 3)) * 3.0
    amplitudes = rng.uniform(0.5, 1.5, 6)
    return positions, amplitudes, 1.6


@pytest.mark.parametrize("pad, tolerance", [(2, 0.03), (1, 0.09)])
def test_central_slices_fourier_slice_theorem(blobs, pad, tolerance):
    positions, amplitudes, sigma = blobs
    box = 32
    vol = blob_volume(positions, amplitudes, sigma, box)
    mats = euler_to_matrix(random_rotations(np.random.default_rng(1), 12))
    ref = np.fft.rfft2(np.stack([blob_projection(positions, amplitudes, sigma, box, m) for m in mats]))
    got = physics.central_slices(physics.volume_to_fourier(vol, pad=pad), mats, pad=pad).numpy()
    assert got.shape == (12, box, box // 2 + 1)
    low = physics.radial_frequency(box).numpy() < 0.25
    err = np.linalg.norm((got - ref)[:, low]) / np.linalg.norm(ref[:, low])
    assert err < tolerance
    # The transposed matrices (the usual mistake) do not match.
    wrong = physics.central_slices(physics.volume_to_fourier(vol, pad=pad), mats.transpose(0, 2, 1), pad=pad).numpy()
    assert np.linalg.norm((wrong - ref)[:, low]) / np.linalg.norm(ref[:, low]) > 0.3


def test_identity_slice_is_the_sum_over_z(blobs):
    vol = blob_volume(*blobs, 32)
    exact = np.fft.rfft2(vol.sum(axis=0))
    got = physics.central_slices(physics.volume_to_fourier(vol, correct_interpolation=False), np.eye(3)[None])[0].numpy()
    np.testing.assert_allclose(got, exact, atol=1e-4 * np.abs(exact).max())
    # With the sinc² pre-correction on-grid samples are off by that factor, a few % for a compact map.
    corrected = physics.central_slices(physics.volume_to_fourier(vol, pad=2), np.eye(3)[None], pad=2)[0].numpy()
    assert np.linalg.norm(corrected - exact) / np.linalg.norm(exact) < 0.05
    image = torch.fft.irfft2(torch.as_tensor(got), s=(32, 32)).numpy()
    np.testing.assert_allclose(image, vol.sum(axis=0), atol=1e-4 * vol.sum(axis=0).max())


def test_rotation_convention_matches_relion_and_project_atoms():
    box, px = 32, 4.0
    one = np.array([[20.0, 0.0, 0.0]])  # x = 20 Å
    vol_ft = physics.volume_to_fourier(atoms_to_volume(one, box, px, sigma=6.0), pad=2)
    # rot = 90: A·(20, 0, 0) = (0, -20, 0): the blob moves to y = -5 pixels.
    image = torch.fft.irfft2(physics.central_slices(vol_ft, euler_to_matrix(np.array([[90.0, 0.0, 0.0]])), pad=2), s=(box, box))[0].numpy()
    assert np.unravel_index(np.argmax(image), image.shape) == (box // 2 - 5, box // 2)
    # tilt = 90: A·(20, 0, 0) = (0, 0, 20): on the projection axis, at the centre.
    image = torch.fft.irfft2(physics.central_slices(vol_ft, euler_to_matrix(np.array([[0.0, 90.0, 0.0]])), pad=2), s=(box, box))[0].numpy()
    assert np.unravel_index(np.argmax(image), image.shape) == (box // 2, box // 2)
    # An asymmetric cloud of atoms: the same images as project_atoms (RELION's convention).
    atoms = np.array([[20.0, 0, 0], [0, -28, 0], [0, 0, 36], [12, 16, -8]])
    vol_ft = physics.volume_to_fourier(atoms_to_volume(atoms, box, px, sigma=6.0), pad=2)
    angles = np.array([[90.0, 0, 0], [0, 90, 0], [0, 0, 90], [-90, 90, 180]])
    ours = torch.fft.irfft2(physics.central_slices(vol_ft, euler_to_matrix(angles), pad=2), s=(box, box)).numpy()
    ref = project_atoms(atoms, angles, box, px, sigma=6.0)
    for a, b in zip(ours, ref):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


def test_gradients_reach_volume_and_rotations(blobs):
    vol = torch.tensor(blob_volume(*blobs, 16), requires_grad=True)
    rot = torch.tensor(euler_to_matrix(random_rotations(np.random.default_rng(2), 3)), dtype=torch.float32, requires_grad=True)
    slices = physics.central_slices(physics.volume_to_fourier(vol), rot)
    (slices.abs() ** 2).sum().backward()
    assert vol.grad is not None and vol.grad.abs().sum() > 0
    assert rot.grad is not None and rot.grad.abs().sum() > 0
    # An explicit Fourier-space parameter works too.
    ft = physics.volume_to_fourier(blob_volume(*blobs, 16)).detach().requires_grad_(True)
    physics.central_slices(ft, rot.detach()).abs().sum().backward()
    assert ft.grad is not None and ft.grad.abs().sum() > 0


def test_volume_fourier_round_trip(blobs):
    vol = blob_volume(*blobs, 32)
    for pad in (1, 2):
        back = physics.fourier_to_volume(physics.volume_to_fourier(vol, pad=pad), pad=pad).numpy()
        np.testing.assert_allclose(back, vol, atol=1e-5)
    with pytest.raises(ValueError, match="even"):
        physics.volume_to_fourier(np.zeros((15, 15, 15)))


def test_back_projection_recovers_the_map(blobs):
    box = 24
    vol = blob_volume(blobs[0] * 0.8, blobs[1], blobs[2], box)
    mats = euler_to_matrix(random_rotations(np.random.default_rng(3), 1500)).astype(np.float32)
    spectra = physics.central_slices(physics.volume_to_fourier(vol, pad=2), mats, pad=2)
    values, weights = physics.insert_slices(spectra, mats, box)
    assert values.shape == (box,) * 3 and weights.shape == (box,) * 3
    ratio = values / (weights + 1e-3)
    assert torch.fft.ifftn(ratio).imag.abs().max() < 1e-4 * torch.fft.ifftn(ratio).real.abs().max()
    rec = physics.fourier_to_volume_full(ratio).numpy()
    assert np.corrcoef(rec.ravel(), vol.ravel())[0, 1] > 0.98


def test_band_limited_insertion_is_exact_below_the_limit(blobs):
    box, limit = 24, 0.25
    vol = blob_volume(*blobs, box)
    mats = euler_to_matrix(random_rotations(np.random.default_rng(4), 200)).astype(np.float32)
    spectra = physics.central_slices(physics.volume_to_fourier(vol), mats)
    full = physics.insert_slices(spectra, mats, box) + (physics.insert_weights(spectra.abs(), mats, box),)
    limited = physics.insert_slices(spectra, mats, box, limit) + (physics.insert_weights(spectra.abs(), mats, box, limit),)
    k = torch.fft.fftfreq(box)
    kr = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    inside, outside = kr <= limit - 2 / box, kr > limit + 2 / box
    for a, b in zip(full, limited):
        torch.testing.assert_close(b[inside], a[inside], atol=1e-3 * float(a.abs().max()), rtol=0)
        assert float(b[outside].abs().max()) == 0.0
        assert float(b[~inside & ~outside].abs().sum()) > 0  # partial sums at the edge


# -- shifts and resampling


def centred_blob(box, sigma=2.0, centre=None):
    c = box // 2 if centre is None else centre
    y, x = np.meshgrid(np.arange(box), np.arange(box), indexing="ij")
    if np.isscalar(c):
        c = (c, c)
    return np.exp(-((x - c[1]) ** 2 + (y - c[0]) ** 2) / (2 * sigma**2)).astype(np.float32)


def test_shift_images_uses_relion_origins():
    box = 32
    img = centred_blob(box, centre=(14, 17))
    spectrum = torch.fft.rfft2(torch.as_tensor(img))[None]
    # Origin (3, -2): the content moves by (-3, +2) in (x, y).
    moved = torch.fft.irfft2(physics.shift_images(spectrum, torch.tensor([[3.0, -2.0]]), box), s=(box, box))[0].numpy()
    np.testing.assert_allclose(moved, np.roll(img, (2, -3), axis=(0, 1)), atol=1e-5)
    # A sub-pixel origin and its inverse cancel, and the shift is differentiable.
    s = torch.tensor([[0.4, -1.3]], requires_grad=True)
    back = physics.shift_images(physics.shift_images(spectrum, s, box), -s, box)
    torch.testing.assert_close(back, spectrum.to(back.dtype), atol=1e-4, rtol=0)
    physics.shift_images(spectrum, s, box).real.sum().backward()
    assert s.grad is not None


def test_fourier_crop_keeps_centre_and_mean():
    img = centred_blob(64, sigma=3.0) + 0.25
    small = physics.fourier_crop(torch.as_tensor(img)[None], 32)[0].numpy()
    assert small.shape == (32, 32)
    assert small.mean() == pytest.approx(img.mean(), rel=1e-5)
    assert np.unravel_index(np.argmax(small), small.shape) == (16, 16)
    np.testing.assert_allclose(small, centred_blob(32, sigma=1.5) + 0.25, atol=2e-3)
    back = physics.fourier_crop(small, 64).numpy()  # padding: Fourier interpolation
    np.testing.assert_allclose(back, img, atol=2e-3)
    vol = blob_volume(np.array([[0.0, 0.0, 0.0]]), [1.0], 3.0, 32) + 0.1
    vsmall = physics.fourier_crop_volume(vol, 16).numpy()
    assert vsmall.mean() == pytest.approx(vol.mean(), rel=1e-5)
    assert np.unravel_index(np.argmax(vsmall), vsmall.shape) == (8, 8, 8)
    np.testing.assert_allclose(vsmall, blob_volume(np.zeros((1, 3)), [1.0], 1.5, 16) + 0.1, atol=3e-3)


def test_model_spectra_composes_slice_ctf_and_shift(blobs):
    box = 16
    ft = physics.volume_to_fourier(blob_volume(*blobs, box))
    mats = euler_to_matrix(random_rotations(np.random.default_rng(4), 2))
    ctf = physics.ctf_2d(dict(defocus_u=10000.0, defocus_v=9000.0, defocus_angle=10.0, voltage=300.0, cs=2.7, amplitude_contrast=0.1), box, 3.0)
    shifts = torch.tensor([[1.0, 2.0], [-0.5, 0.0]])
    expected = physics.shift_images(physics.central_slices(ft, mats) * ctf, shifts, box)
    torch.testing.assert_close(physics.model_spectra(ft, mats, shifts, ctf), expected)


# -- FSC


def test_fsc_of_a_map_with_itself_and_with_noise():
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(32, 32, 32))
    curve = fsc(vol, vol, 2.0)
    assert len(curve.fsc) == 17 and curve.frequency[-1] == pytest.approx(0.25)
    np.testing.assert_allclose(curve.fsc, 1.0)
    assert curve.crossing(0.143) is None and curve.resolution(0.143) == pytest.approx(4.0)  # Nyquist
    noise = fsc(vol, rng.normal(size=vol.shape), 2.0)
    assert np.abs(noise.fsc[2:]).max() < 0.2
    assert noise.resolution(0.5) > 30.0


def test_fsc_crosses_at_the_low_pass_resolution():
    rng = np.random.default_rng(1)
    box, px = 32, 2.0
    vol = rng.normal(size=(box,) * 3)
    k = np.fft.fftfreq(box) * box
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    low = np.fft.ifftn(np.fft.fftn(vol) * (r < 8.5)).real + 1e-4 * rng.normal(size=vol.shape)
    curve = fsc(vol, low, px)
    # Kept up to shell 8, gone from shell 9: the crossing is half-way, at 32·2/8.5 Å.
    assert curve.resolution(0.5) == pytest.approx(box * px / 8.5, rel=0.02)
    assert curve.resolution_px(0.5) == pytest.approx(box / 8.5, rel=0.02)
    masked = fsc(vol, vol, px, mask=soft_mask(box))
    np.testing.assert_allclose(masked.fsc, 1.0)
    with pytest.raises(ValueError, match="different shapes"):
        fsc(vol, vol[:16, :16, :16], px)


def test_plot_fsc_draws_curves_and_thresholds():
    rng = np.random.default_rng(2)
    vol = rng.normal(size=(16, 16, 16))
    fig = plot_fsc({"a": fsc(vol, vol, 1.5), "b": fsc(vol, vol + rng.normal(size=vol.shape), 1.5)})
    ax = fig.axes[0]
    assert len(ax.lines) == 2 + 3  # two curves, 0.5, 0.143 and the zero line
    assert ax.get_xlabel() == "resolution (Å)"
    fig.savefig(io.BytesIO(), format="png")


# -- superposition of maps


@pytest.fixture(scope="module")
def blob_map():
    rng = np.random.default_rng(5)
    positions = rng.normal(size=(8, 3)) * 4.5
    amplitudes = rng.uniform(0.5, 1.5, 8)
    return positions, amplitudes


@pytest.mark.parametrize("mirrored", [False, True])
def test_align_maps_recovers_rotation_shift_and_hand(blob_map, mirrored):
    positions, amplitudes = blob_map
    ref = blob_volume(positions, amplitudes, 1.8, 32)
    truth = Rotation.random(random_state=11).as_matrix()
    shift = np.array([2.0, -1.0, 1.5])
    # The moving map's features sit at p' = [F]·Rᵀ·(p − t), so that R·[F]·p' + t = p.
    moved = (positions - shift) @ truth
    if mirrored:
        moved = moved @ MIRROR
    mov = blob_volume(moved, amplitudes, 1.8, 32)
    result = align_maps(ref, mov, 2.0, search_box=16, n_rotations=1500)
    assert result.flipped is mirrored
    assert rotation_angles(result.rotation, truth) < 3.0
    np.testing.assert_allclose(result.shift_px, shift, atol=0.3)
    np.testing.assert_allclose(result.shift_angst, 2.0 * result.shift_px)
    assert result.score > 0.99
    assert fsc(ref, result.aligned, 2.0).resolution(0.5) < 6.0


def test_uniform_rotations_cover_so3():
    grid = uniform_rotations(500)
    np.testing.assert_allclose(np.linalg.det(grid), 1.0)
    probes = Rotation.random(200, random_state=1).as_matrix()
    nearest = [rotation_angles(np.broadcast_to(p, grid.shape), grid).min() for p in probes]
    assert max(nearest) < 30.0  # 500 samples are ~20° apart


# -- poses


def test_global_ambiguities_are_right_multiplication_and_mirror_conjugation():
    rng = np.random.default_rng(3)
    atoms = random_structure(rng, 100.0, 300)
    angles = random_rotations(rng, 3)
    a = euler_to_matrix(angles)
    g = Rotation.random(random_state=4).as_matrix()
    images = project_atoms(atoms, angles, 32, 4.0)
    # The map rotated by G (atoms at G·p) seen with poses A·Gᵀ gives the same images.
    np.testing.assert_allclose(project_atoms(atoms @ g.T, matrix_to_euler(a @ g.T), 32, 4.0), images, atol=1e-6)
    # The mirrored map (atoms at F·p) seen with poses F·A·F gives the same images.
    np.testing.assert_allclose(project_atoms(atoms @ MIRROR, matrix_to_euler(MIRROR @ a @ MIRROR), 32, 4.0), images, atol=1e-6)


def noisy_poses(n: int, degrees: float, seed: int):
    rng = np.random.default_rng(seed)
    truth = Rotation.random(n, random_state=seed).as_matrix()
    g = Rotation.random(random_state=seed + 1).as_matrix()
    axes = rng.normal(size=(n, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    noise = Rotation.from_rotvec(axes * np.deg2rad(degrees)).as_matrix()
    return truth, g, noise


def test_rotation_errors_after_global_alignment():
    truth, g, noise = noisy_poses(1000, 2.0, 7)
    estimated = truth @ g @ noise
    outliers = np.random.default_rng(8).random(len(truth)) < 0.2
    estimated[outliers] = Rotation.random(int(outliers.sum()), random_state=9).as_matrix()
    result = rotation_errors(estimated, truth)
    assert result.median == pytest.approx(2.0, abs=0.3)
    assert not result.mirrored and result.other_hand_median > 30.0
    assert rotation_angles(result.rotation, g) < 0.5
    np.testing.assert_allclose(result.errors[~outliers], 2.0, atol=0.3)
    raw = rotation_errors(estimated, truth, align=False)
    assert raw.median > 30.0 and raw.mirrored is False
    assert rotation_errors(truth, truth).median < 1e-4


def test_rotation_errors_detects_a_mirrored_set():
    truth, g, noise = noisy_poses(500, 2.0, 12)
    estimated = MIRROR @ truth @ MIRROR @ g @ noise
    result = rotation_errors(estimated, truth)
    assert result.mirrored
    assert result.median == pytest.approx(2.0, abs=0.3)
    assert result.as_dict()["mirrored"] is True


def test_rotation_errors_report_a_hand_mixture():
    # 65 % of the poses from one reconstruction, 35 % from a mirrored one in another orientation.
    truth, g, noise = noisy_poses(1000, 5.0, 21)
    h = Rotation.random(random_state=30).as_matrix()
    other = np.random.default_rng(22).random(len(truth)) < 0.35
    estimated = truth @ g @ noise
    estimated[other] = MIRROR @ truth[other] @ MIRROR @ h @ noise[other]
    result = rotation_errors(estimated, truth)
    assert not result.mirrored and result.median < 10.0
    assert result.other_hand_fraction == pytest.approx(other.mean(), abs=0.03)
    # Random outliers are not a mixture.
    truth, g, noise = noisy_poses(1000, 5.0, 23)
    estimated = truth @ g @ noise
    wrong = np.random.default_rng(24).random(len(truth)) < 0.35
    estimated[wrong] = Rotation.random(int(wrong.sum()), random_state=25).as_matrix()
    assert rotation_errors(estimated, truth).other_hand_fraction < 0.02


def test_shift_errors_remove_a_map_translation():
    rng = np.random.default_rng(4)
    rot = Rotation.random(300, random_state=5).as_matrix()
    truth = rng.normal(size=(300, 2)) * 3.0
    t = np.array([1.5, -2.0, 0.5])
    estimated = truth + rot[:, :2, :] @ t + rng.normal(size=(300, 2)) * 0.1
    result = shift_errors(estimated, truth, rot)
    np.testing.assert_allclose(result.translation, t, atol=0.05)
    assert result.median < 0.2
    assert shift_errors(estimated, truth, rot, align=False).median > 1.0
