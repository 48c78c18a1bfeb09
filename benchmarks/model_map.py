"""A map computed from an atomic model, as a ground truth for the reconstruction benchmark.

gemmi (a benchmark-only dependency: ``pip install gemmi``) reads the PDB or
mmCIF file and puts each atom's electron-scattering density (its electron
form factors, blurred to the map's Nyquist) on a cubic box centred on the
model's centre of mass; waters, ligands and hydrogens are left out and only
the first model is used.

Run: python benchmarks/model_map.py MODEL.pdb[.gz] --box 64 --pixel-size 3 --out MAP.mrc

The benchmark used PDB entry 1BD2 (a T-cell receptor bound to a peptide–MHC
class I complex, about 90 kDa in 5 chains, no symmetry).  The machine that ran
it could not reach the PDB; the entry ships in the source distribution of
MDAnalysisTests on PyPI (``pip download MDAnalysisTests --no-deps``, then
``MDAnalysisTests/data/mmcif/1BD2.pdb.gz``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from napari_cryo.errors import CryoInputError
from napari_cryo.io.mrc import write_mrc


def model_map(path: str | Path, box: int, pixel_size: float) -> np.ndarray:
    """The (box, box, box) ZYX float32 map of the model at ``path``, at ``pixel_size`` Å per voxel."""
    import gemmi

    structure = gemmi.read_structure(str(path))
    structure.setup_entities()
    structure.remove_ligands_and_waters()
    structure.remove_hydrogens()
    del structure[1:]
    model = structure[0]
    xyz = np.array([atom.pos.tolist() for chain in model for residue in chain for atom in residue])
    if len(xyz) == 0:
        raise ValueError(f"{path}: no atoms left after removing waters, ligands and hydrogens")
    edge = box * pixel_size
    if np.ptp(xyz, axis=0).max() > edge:
        raise ValueError(f"{path}: the model ({np.ptp(xyz, axis=0).max():.0f} Å) does not fit a {edge:.0f} Å box")
    offset = gemmi.Position(*(edge / 2 - xyz.mean(axis=0)))
    for chain in model:
        for residue in chain:
            for atom in residue:
                atom.pos = atom.pos + offset
    cell = gemmi.UnitCell(edge, edge, edge, 90, 90, 90)
    calc = gemmi.DensityCalculatorE()
    # gemmi sizes the grid from d_min / (2·rate) when it places the density: rate 1 keeps one voxel per pixel.
    calc.d_min = 2 * pixel_size
    calc.rate = 1.0
    calc.grid.set_unit_cell(cell)
    calc.grid.spacegroup = gemmi.SpaceGroup("P 1")
    calc.grid.set_size(box, box, box)
    calc.put_model_density_on_grid(model)
    density = np.array(calc.grid, copy=True)
    if density.shape != (box, box, box):
        raise RuntimeError(f"gemmi made a {density.shape} grid instead of {box}³")
    # gemmi's grid is indexed x, y, z; maps here are ZYX.
    return np.ascontiguousarray(density.transpose(2, 1, 0)).astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="PDB or mmCIF file (may be gzipped)")
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--pixel-size", type=float, default=3.0, help="Å per voxel")
    parser.add_argument("--out", required=True)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    try:
        volume = model_map(args.model, args.box, args.pixel_size)
        write_mrc(args.out, volume, args.pixel_size, overwrite=args.overwrite)
    except (CryoInputError, ValueError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}: {args.box}³ at {args.pixel_size:g} Å/px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
