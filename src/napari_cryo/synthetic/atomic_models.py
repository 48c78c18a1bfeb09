"""Real atomic models for the simulators: a PDB reader and symmetric assemblies.

The generic picker must see the shapes of real proteins, not only the
simulator's pseudo-atomic blobs.  Atomic models are read from PDB files
(plain, gzip or bzip2; e.g. the test data that ships in the MDAnalysisTests
package on PyPI) as C-alpha positions, one per residue: at the picker's
working pixel sizes (4-20 Å) a residue is a point, so C-alphas weighted by
a residue's mass reproduce the low-resolution density at an eighth of the cost
of all atoms.  Single chains become particles of many shapes by assembling
them with point-group symmetry (rings, dihedral stacks, tetrahedral,
octahedral and icosahedral cages, short helical filaments) and scaling.
"""

from __future__ import annotations

import bz2
import gzip
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from ..errors import CryoInputError

#: Residues shorter than this are peptides or ligands, not particles worth assembling.
MIN_RESIDUES = 60


def parse_pdb_calpha(text: str, first_model_only: bool = True) -> np.ndarray:
    """C-alpha XYZ positions (Å) of the ATOM records of PDB text.

    Parameters
    ----------
    text : str
        The contents of a PDB file.
    first_model_only : bool
        Stop at the first ``ENDMDL`` (NMR ensembles hold the molecule many times).

    Returns
    -------
    numpy.ndarray
        (N, 3) float coordinates, in file order; alternate locations other
        than the first are skipped.
    """
    xyz = []
    for line in text.splitlines():
        if first_model_only and line.startswith("ENDMDL"):
            break
        if not line.startswith("ATOM  ") or line[12:16].strip() != "CA" or line[16] not in (" ", "A"):
            continue
        try:
            xyz.append((float(line[30:38]), float(line[38:46]), float(line[46:54])))
        except ValueError:
            continue
    return np.asarray(xyz, dtype=float).reshape(-1, 3)


def _decompress(name: str, raw: bytes) -> str:
    if name.endswith(".gz"):
        raw = gzip.decompress(raw)
    elif name.endswith(".bz2"):
        raw = bz2.decompress(raw)
    return raw.decode("latin-1")


def read_pdb_calpha(path: str | os.PathLike) -> np.ndarray:
    """C-alpha positions (Å) from a PDB file (``.pdb``, ``.ent``, optionally ``.gz``/``.bz2``).

    Raises
    ------
    CryoInputError
        If the file cannot be read or holds no C-alpha atoms.
    """
    path = Path(path)
    try:
        text = _decompress(path.name, path.read_bytes())
    except (OSError, EOFError, ValueError) as exc:
        raise CryoInputError(path, f"cannot be read as a PDB file ({exc})") from None
    xyz = parse_pdb_calpha(text)
    if not len(xyz):
        raise CryoInputError(path, "holds no C-alpha atoms (not a protein PDB file?)")
    return xyz


def pdb_models_in_archive(
    archive: str | os.PathLike, exclude: tuple[str, ...] = (), min_residues: int = MIN_RESIDUES
) -> Iterator[tuple[str, np.ndarray]]:
    """``(member name, C-alphas)`` for every protein PDB file in a tar archive (e.g. a PyPI sdist).

    Parameters
    ----------
    archive : path
        A ``.tar.gz`` (or any tar) archive.
    exclude : tuple of str
        Members whose file name starts with one of these (case-insensitive) are
        skipped, e.g. models kept aside for evaluation.
    min_residues : int
        Smaller models are skipped.
    """
    lowered = tuple(e.lower() for e in exclude)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = member.name
            base = name.rsplit("/", 1)[-1]
            if not member.isfile() or not base.lower().endswith((".pdb", ".pdb.gz", ".pdb.bz2", ".ent", ".ent.gz")):
                continue
            if base.lower().startswith(lowered) if lowered else False:
                continue
            handle = tar.extractfile(member)
            if handle is None:
                continue
            try:
                xyz = parse_pdb_calpha(_decompress(base, handle.read()))
            except (OSError, EOFError, ValueError):
                continue
            if len(xyz) >= min_residues:
                yield name, xyz


def centred(atoms: np.ndarray) -> np.ndarray:
    """Atoms with their centre of mass at the origin."""
    atoms = np.asarray(atoms, dtype=float)
    return atoms - atoms.mean(axis=0)


def extent(atoms: np.ndarray) -> float:
    """Largest diameter about the centre of mass, in the atoms' units."""
    a = centred(atoms)
    return float(2.0 * np.max(np.linalg.norm(a, axis=1))) if len(a) else 0.0


def scaled_to(atoms: np.ndarray, diameter: float) -> np.ndarray:
    """Centred atoms scaled so that their extent is ``diameter``."""
    a = centred(atoms)
    e = extent(a)
    return a * (diameter / e) if e > 0 else a


def _group(symmetry: str) -> Rotation:
    kind, order = symmetry[0].upper(), symmetry[1:]
    if kind in "CD" and order.isdigit() and int(order) >= 1:
        return Rotation.create_group(f"{kind}{int(order)}")
    if symmetry.upper() in ("T", "O", "I"):
        return Rotation.create_group(symmetry.upper())
    raise ValueError(f"unknown point group {symmetry!r} (use Cn, Dn, T, O or I)")


def symmetric_assembly(monomer: np.ndarray, symmetry: str, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Copies of a chain arranged by a point group about the origin.

    Parameters
    ----------
    monomer : numpy.ndarray
        (N, 3) atoms of one chain.
    symmetry : str
        ``"C<n>"``, ``"D<n>"``, ``"T"``, ``"O"`` or ``"I"``.
    radius : float
        Distance of each copy's centre from the symmetry axis or centre (Å);
        about the chain's radius makes touching subunits.
    rng : numpy.random.Generator
        Orients the chain and places it off the axes (so copies do not overlap
        exactly).

    Returns
    -------
    numpy.ndarray
        (N * |G|, 3) centred atoms.
    """
    group = _group(symmetry)
    unit = Rotation.random(random_state=rng).apply(centred(monomer))
    # Off every symmetry axis: a random direction, tilted towards the equator for rings.
    direction = rng.normal(size=3)
    if symmetry[0].upper() in "CD":
        direction[2] *= 0.3
    direction /= np.linalg.norm(direction)
    unit = unit + radius * direction
    return centred(np.concatenate([group[k].apply(unit) for k in range(len(group))]))


def helical_filament(monomer: np.ndarray, n_units: int, rise: float, twist_deg: float, radius: float, rng: np.random.Generator) -> np.ndarray:
    """A short helical filament segment (``n_units`` copies, ``rise`` Å and ``twist_deg`` per copy)."""
    unit = Rotation.random(random_state=rng).apply(centred(monomer)) + np.array([radius, 0.0, 0.0])
    parts = []
    for k in range(n_units):
        rot = Rotation.from_euler("z", k * twist_deg, degrees=True)
        parts.append(rot.apply(unit) + np.array([0.0, 0.0, k * rise]))
    return centred(np.concatenate(parts))


def random_assembly(chains: list[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A random particle built from real chains: a symmetric oligomer, a filament, a complex or one chain.

    Returns
    -------
    atoms : numpy.ndarray
        (N, 3) centred atoms in Å (native scale; the caller scales to a diameter).
    description : str
        What was built, for the record of what the picker saw.
    """
    if not chains:
        raise ValueError("no chains to assemble")
    chain = chains[int(rng.integers(len(chains)))]
    r = extent(chain) / 2.0
    kind = rng.choice(["single", "cyclic", "dihedral", "cage", "filament", "complex"], p=[0.15, 0.2, 0.15, 0.2, 0.1, 0.2])
    if kind == "single":
        return centred(chain), "monomer"
    if kind == "cyclic":
        n = int(rng.integers(2, 9))
        return symmetric_assembly(chain, f"C{n}", r * (0.6 + 0.5 * n / 4), rng), f"C{n} ring"
    if kind == "dihedral":
        n = int(rng.integers(2, 7))
        return symmetric_assembly(chain, f"D{n}", r * (0.7 + 0.4 * n / 4), rng), f"D{n}"
    if kind == "cage":
        group = str(rng.choice(["T", "O", "I"]))
        shell = {"T": 1.6, "O": 2.2, "I": 3.4}[group]
        return symmetric_assembly(chain, group, r * shell, rng), f"{group} cage"
    if kind == "filament":
        n = int(rng.integers(6, 20))
        return helical_filament(chain, n, r * rng.uniform(0.3, 0.9), rng.uniform(20, 170), r * rng.uniform(0.5, 1.2), rng), f"{n}-unit filament"
    # A hetero-complex: several different chains packed against each other.
    n = int(rng.integers(2, 7))
    parts = [centred(chain)]
    for _ in range(n - 1):
        other = Rotation.random(random_state=rng).apply(centred(chains[int(rng.integers(len(chains)))]))
        anchor = parts[int(rng.integers(len(parts)))]
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        shift = anchor.mean(axis=0) + d * (extent(anchor) + extent(other)) / 2.0 * 0.8
        parts.append(other + shift)
    return centred(np.concatenate(parts)), f"{n}-chain complex"
