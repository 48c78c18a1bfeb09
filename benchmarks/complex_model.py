"""A large asymmetric complex built from several atomic models, for reconstruction benchmarks.

The PDB entries that ship with MDAnalysisTests (on PyPI) are 40–170 Å across;
real data sets are often complexes of 250–350 Å.  This script packs whole
entries into one asymmetric assembly: the first at the centre, each next one
turned at random and slid in from a random direction until its atoms come
within ``--contact`` Å of the assembly, so the parts touch without clashing.
The result is written as a PDB file that ``model_map.py`` turns into a map.

gemmi is a benchmark-only dependency (``pip install gemmi``).

Run: python benchmarks/complex_model.py 3KPR.pdb.gz 1BD2.pdb.gz 3PWP.pdb.gz 19hc.pdb.gz 1a28.pdb.gz --seed 0 --out complex.pdb
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation


def _coordinates(model) -> np.ndarray:
    return np.array([atom.pos.tolist() for chain in model for residue in chain for atom in residue])


def _load(path: str):
    import gemmi

    structure = gemmi.read_structure(path)
    structure.setup_entities()
    structure.remove_ligands_and_waters()
    structure.remove_hydrogens()
    del structure[1:]
    return structure[0]


def _move(model, rotation: np.ndarray, translation: np.ndarray) -> None:
    import gemmi

    for chain in model:
        for residue in chain:
            for atom in residue:
                p = rotation @ np.array(atom.pos.tolist()) + translation
                atom.pos = gemmi.Position(*p)


def assemble(paths: list[str], seed: int = 0, contact: float = 4.0):
    """One gemmi Structure holding every model of ``paths``, packed into a touching, asymmetric assembly."""
    import gemmi

    rng = np.random.default_rng(seed)
    out = gemmi.Structure()
    out.add_model(gemmi.Model("1"))
    placed = np.empty((0, 3))
    letters = iter("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789" * 4)
    for i, path in enumerate(paths):
        model = _load(path)
        xyz = _coordinates(model)
        rotation = Rotation.random(random_state=rng).as_matrix()
        centred = (xyz - xyz.mean(axis=0)) @ rotation.T
        if i == 0:
            offset = np.zeros(3)
        else:
            tree = cKDTree(placed)
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            # Slide in from far along the direction until the nearest atoms are within `contact`.
            distance = np.linalg.norm(placed - placed.mean(axis=0), axis=1).max() + np.linalg.norm(centred, axis=1).max() + contact
            while distance > 0:
                gap = tree.query(centred + placed.mean(axis=0) + direction * distance)[0].min()
                if gap <= contact:
                    break
                distance -= max(0.5, gap - contact)
            offset = placed.mean(axis=0) + direction * distance
        _move(model, rotation, offset - rotation @ xyz.mean(axis=0))
        placed = np.vstack([placed, _coordinates(model)])
        for chain in model:
            copy = gemmi.Chain(next(letters))
            for residue in chain:
                copy.add_residue(residue)
            out[0].add_chain(copy)
    out.setup_entities()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="PDB or mmCIF files (may be gzipped), the first at the centre")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contact", type=float, default=4.0, help="distance (Å) at which a sliding part stops")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if Path(args.out).exists():
        print(f"error: {args.out}: exists", file=sys.stderr)
        return 1
    structure = assemble(args.models, args.seed, args.contact)
    xyz = _coordinates(structure[0])
    structure.write_pdb(args.out)
    print(f"{args.out}: {len(xyz)} atoms in {len(structure[0])} chains, extent {np.ptp(xyz, axis=0).round(0)} Å")
    return 0


if __name__ == "__main__":
    sys.exit(main())
