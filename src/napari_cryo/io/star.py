"""RELION STAR files: reading tables, coordinates and pixel sizes; writing coordinate files.

Parsing is done by ``starfile`` (teamtomo); this module adds what RELION
files mean: which block holds particles, how optics groups attach to them,
which pixel size the coordinates are in, and how RELION 3.0, 3.1+ and 5
differ.  Coordinates are returned in pixels of the micrograph or tomogram,
ZYX (YX) order to match napari, with the particle origin shifts
(``rlnOrigin*``) already applied.
"""

from __future__ import annotations

import linecache
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CryoInputError
from .atomic import atomic_path

COORD_COLUMNS = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
CENTERED_COLUMNS = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst")
ORIGIN_ANGST = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")
ORIGIN_PIXELS = ("rlnOriginX", "rlnOriginY", "rlnOriginZ")
EULER_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
GROUP_COLUMNS = ("rlnTomoName", "rlnMicrographName")

#: Pixel-size columns for coordinates, in order of preference.  Coordinates
#: are in micrograph pixels (tilt-series pixels in tomography).  RELION's
#: extraction drops rlnMicrographPixelSize from particle files, and the
#: particle images are often rescaled, so the original (movie) pixel size is
#: the better guess after it; real RELION 3.1 files bear this out.
COORD_PIXEL_SIZE_COLUMNS = (
    "rlnMicrographPixelSize",
    "rlnTomoTiltSeriesPixelSize",
    "rlnMicrographOriginalPixelSize",
    "rlnImagePixelSize",
    "rlnPixelSize",
)
#: Pixel-size columns for particle images, in RELION's own order of preference.
IMAGE_PIXEL_SIZE_COLUMNS = (
    "rlnImagePixelSize",
    "rlnMicrographPixelSize",
    "rlnMicrographOriginalPixelSize",
    "rlnTomoTiltSeriesPixelSize",
    "rlnPixelSize",
)


#: RELION's integer-typed labels (``EMDL_INT`` in RELION 5's ``metadata_label.h``).
#: RELION parses these with an integer parser, so ``1.000000`` is an error
#: there: :func:`write_star` writes them as integers or refuses.
INTEGER_LABELS = (
    "rlnAdaptiveOversampleOrder", "rlnAreaId", "rlnAutoLocalSearchesHealpixOrder", "rlnAverageNrOfFrames",
    "rlnBeamTiltClass", "rlnBodyKeepFixed", "rlnBodyRotateRelativeTo", "rlnClassIndex", "rlnClassNumber",
    "rlnCoarseImageSize", "rlnCurrentImageSize", "rlnCurrentIteration", "rlnDataDimensionality", "rlnDataType",
    "rlnEERGrouping", "rlnEERUpsampling", "rlnFourierSpaceInterpolator", "rlnGradEmIters", "rlnGradSubsetOrder",
    "rlnGradSuspendFinerSamplingIter", "rlnGradSuspendLocalSamplingIter", "rlnGroupNrParticles", "rlnGroupNumber",
    "rlnHasLargeSizeIncreaseIterationsAgo", "rlnHealpixOrder", "rlnHealpixOrderOriginal", "rlnHelicalTubeID",
    "rlnImageDimensionality", "rlnImageId", "rlnImageSize", "rlnImageSizeX", "rlnImageSizeY", "rlnImageSizeZ",
    "rlnIncrementImageSize", "rlnIsSelected", "rlnJobType", "rlnJoboptionType", "rlnMaxNumberOfPooledParticles",
    "rlnMaximumCoarseImageSize", "rlnMaximumSignificantPoses", "rlnMicrographEndFrame", "rlnMicrographFrameNumber",
    "rlnMicrographId", "rlnMicrographStartFrame", "rlnMinRadiusNnInterpolation", "rlnMotionModelCoeffsIdx",
    "rlnMotionModelVersion", "rlnMovieFrameNumber", "rlnMovieFramesRunningAverage", "rlnNrBodies", "rlnNrClasses",
    "rlnNrGroups", "rlnNrHelicalAsymUnits", "rlnNrHelicalNStart", "rlnNrOfFrames", "rlnNrOfSignificantSamples",
    "rlnNrOpticsGroups", "rlnNumberOfIterWithoutChangingAssignments", "rlnNumberOfIterWithoutResolutionGain",
    "rlnNumberOfIterations", "rlnOpticsGroup", "rlnOpticsGroupNrParticles", "rlnOpticsGroupNumber",
    "rlnOrientationalPriorMode", "rlnOrientationsID", "rlnOriginalImageSize", "rlnParticleId", "rlnParticleNumber",
    "rlnParticleSelectionType", "rlnPipeLineJobCounter", "rlnPipeLineNodeType", "rlnPipeLineNodeTypeLabelDepth",
    "rlnPipeLineProcessStatus", "rlnPipeLineProcessType", "rlnProteinArea", "rlnRadiusMaskExpImages",
    "rlnRadiusMaskMap", "rlnRandomSeed", "rlnRandomSubset", "rlnReferenceDimensionality", "rlnSchemeEdgeNumber",
    "rlnSelected", "rlnSgdFinalSubsetSize", "rlnSgdInitialSubsetSize", "rlnSgdMaxSubsets",
    "rlnSgdSigma2FudgeHalflife", "rlnSgdSubsetSize", "rlnSgdWriteEverySubset", "rlnSmallestChangesClasses",
    "rlnSolventArea", "rlnSortedIndex", "rlnSpectralIndex", "rlnTomoDeformationGridSizeX",
    "rlnTomoDeformationGridSizeY", "rlnTomoFrameCount", "rlnTomoManifoldIndex", "rlnTomoParticleId",
    "rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ", "rlnTomoTiltMovieFrameCount", "rlnTomoTiltMovieIndex",
    "rlnWidthMaskEdge",
)
#: RELION's boolean labels (``EMDL_BOOL``), written as the integers 0 and 1.
BOOLEAN_LABELS = (
    "rlnAnglePsiFlip", "rlnBlushNoSpectralTrailing", "rlnCtfDataAreCtfCorrected", "rlnCtfDataAreCtfPremultiplied",
    "rlnCtfDataArePhaseFlipped", "rlnDoAutoRefine", "rlnDoAutoSampling", "rlnDoBlush", "rlnDoCenterClasses",
    "rlnDoCorrectCtf", "rlnDoCorrectMagnification", "rlnDoCorrectNorm", "rlnDoCorrectScale",
    "rlnDoExternalReconstruct", "rlnDoFastSubsetOptimisation", "rlnDoGradientRefine", "rlnDoHelicalRefine",
    "rlnDoIgnoreCtfUntilFirstPeak", "rlnDoMapEstimation", "rlnDoOnlyFlipCtfPhases", "rlnDoRealignMovies",
    "rlnDoSkipAlign", "rlnDoSkipRotate", "rlnDoSolventFlattening", "rlnDoSolventFscCorrection",
    "rlnDoSplitRandomHalves", "rlnDoStochasticEM", "rlnDoStochasticGradientDescent", "rlnDoZeroMask", "rlnEnabled",
    "rlnFixSigmaNoiseEstimates", "rlnFixSigmaOffsetEstimates", "rlnFixTauEstimates", "rlnGradHasConverged",
    "rlnHasConverged", "rlnHasHighFscAtResolLimit", "rlnHelicalKeepTiltPriorFixed",
    "rlnHelicalSymmetryLocalRefinement", "rlnIgnoreHelicalSymmetry", "rlnIs3DSampling",
    "rlnIs3DTranslationalSampling", "rlnIsFlip", "rlnIsHelix", "rlnJobIsContinue", "rlnJobIsTomo",
    "rlnRefsAreCtfCorrected", "rlnSchemeBooleanVariableResetValue", "rlnSchemeBooleanVariableValue",
    "rlnSchemeEdgeIsFork", "rlnSchemeJobHasStarted", "rlnSgdSkipAnneal", "rlnTomoSubTomosAre2DStacks",
    "rlnUseTooCoarseSampling",
)
_WHOLE_NUMBER_LABELS = frozenset(INTEGER_LABELS + BOOLEAN_LABELS)
#: RELION string labels of the particle, micrograph and tomogram files the
#: package reads: kept as text, so a name such as ``0001`` is not read as 1.
NAME_LABELS = (
    "rlnMicrographName", "rlnImageName", "rlnImageOriginalName", "rlnTomoName", "rlnOpticsGroupName",
    "rlnMicrographMovieName", "rlnMicrographNameNoDW", "rlnMicrographNameEven", "rlnMicrographNameOdd",
    "rlnMicrographMetadata", "rlnMicrographGainName", "rlnMicrographDefectFile", "rlnMicrographCoordinates",
    "rlnCtfImage", "rlnCtfPowerSpectrum", "rlnMtfFileName", "rlnGroupName", "rlnOriginalParticleName",
    "rlnParticleName", "rlnReconstructImageName", "rlnReferenceImage", "rlnTomoParticleName",
    "rlnTomoTiltSeriesName", "rlnTomoTiltSeriesStarFile", "rlnTomoTiltMovieFile", "rlnTomoReconstructedTomogram",
    "rlnTomoReconstructedTomogramHalf1", "rlnTomoReconstructedTomogramHalf2", "rlnTomoDenoisedTomogram",
    "rlnTomoImportImodDir", "rlnTomoImportCtfFindFile", "rlnTomoImportCtfPlotterFile", "rlnTomoImportOrderList",
    "rlnTomoImportCulledFile", "rlnTomoTomogramsFile", "rlnTomoParticlesFile", "rlnTomoTrajectoriesFile",
    "rlnTomoManifoldsFile", "rlnTomoManifoldType", "rlnTomoDeformationType", "rlnSymmetryGroup",
)


@dataclass
class ParticleTable:
    """The particle (or coordinate) rows of a STAR file with their optics.

    Attributes
    ----------
    path : pathlib.Path
        The STAR file.
    table : pandas.DataFrame
        One row per particle, as stored (no optics columns merged in).
    optics : pandas.DataFrame or None
        The optics block (RELION 3.1+), else ``None``.
    version : str
        ``"3.0"`` (one block, optics on each row) or ``"3.1+"``.
    block_name : str
        Name of the particle block.
    """

    path: Path
    table: pd.DataFrame
    optics: pd.DataFrame | None
    version: str
    block_name: str

    def optics_column(self, column: str) -> pd.Series | None:
        """Per-particle values of an optics column, from the row or its optics group."""
        if column in self.table.columns:
            return self.table[column]
        if self.optics is None or column not in self.optics.columns:
            return None
        if "rlnOpticsGroup" not in self.optics.columns or len(self.optics) == 1:
            return pd.Series(np.repeat(self.optics[column].iloc[0], len(self.table)), index=self.table.index)
        if "rlnOpticsGroup" not in self.table.columns:
            raise CryoInputError(self.path, "the optics block has several groups but the particles have no rlnOpticsGroup")
        groups = self.table["rlnOpticsGroup"].astype(int)
        lookup = dict(zip(self.optics["rlnOpticsGroup"].astype(int), self.optics[column]))
        missing = set(groups) - set(lookup)
        if missing:
            raise CryoInputError(self.path, f"particles name optics group(s) {sorted(missing)} that the optics block lacks")
        return groups.map(lookup)

    def pixel_size(self, columns: tuple[str, ...] = COORD_PIXEL_SIZE_COLUMNS) -> pd.Series | None:
        """Per-particle pixel size in Å from the first column present, else ``None``."""
        for column in columns:
            values = self.optics_column(column)
            if values is not None:
                return pd.to_numeric(values, errors="coerce").astype(float)
        det, mag = self.optics_column("rlnDetectorPixelSize"), self.optics_column("rlnMagnification")
        if det is not None and mag is not None:
            # RELION 3.0: detector pixel in µm and magnification give Å per pixel.
            return pd.to_numeric(det, errors="coerce") * 1e4 / pd.to_numeric(mag, errors="coerce")
        return None


def read_star(path: str | os.PathLike) -> dict[str, pd.DataFrame | dict[str, Any]]:
    """Read every block of a STAR file.

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Returns
    -------
    dict
        Block name -> DataFrame (loops) or dict (simple blocks), in file order.

    Raises
    ------
    CryoInputError
        If the file is missing, unreadable or not a STAR file.
    """
    import starfile

    path = Path(path)
    if not path.exists():
        raise CryoInputError(path, "file not found")
    if path.is_dir():
        raise CryoInputError(path, "is a directory, not a STAR file")
    _check_text(path)
    _check_loop_rows(path)
    # starfile reads lines through linecache and clears it only when a parse succeeds: a failed
    # parse would leave the old lines to be read again after the file is corrected.
    linecache.cache.pop(str(path), None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(path, always_dict=True, parse_as_string=list(NAME_LABELS))
    except UnicodeDecodeError:
        raise CryoInputError(path, "is not a text file, so not a STAR file") from None
    except Exception as exc:  # noqa: BLE001 - the parser raises many kinds
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())  # pandas' messages can span lines
        raise CryoInputError(path, f"cannot be parsed as STAR ({detail})") from None
    finally:
        linecache.cache.pop(str(path), None)
    if not blocks:
        if not _has_data_block(path):
            raise CryoInputError(path, "is not a STAR file (no data_ block)")
        raise CryoInputError(path, "holds no data (empty blocks)")
    return dict(blocks)


def _check_text(path: Path, chunk: int = 1 << 20) -> None:
    """Raise unless the file is UTF-8 text (starfile returns nothing for other encodings)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(chunk)
    except OSError as exc:
        raise CryoInputError(path, f"cannot be read ({exc.strerror})") from None
    if b"\0" in head:
        raise CryoInputError(path, "is not a text file, so not a STAR file")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the chunk end
            raise CryoInputError(path, f"is not UTF-8 text (byte {exc.start}); re-save it as UTF-8") from None


def _check_loop_rows(path: Path) -> None:
    """Raise if a loop lists a label twice or a row has more or fewer values than the loop has labels.

    starfile pads a short row with NaN, so a file cut off in the middle of a
    row (an interrupted copy) or a row broken over two lines would otherwise
    be read with values missing.  The lines are walked the way starfile's
    parser walks them, so that exactly the rows it reads are checked.
    """
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            lines = fh.read().split("\n")  # universal newlines, as starfile's linecache reads them
    except OSError as exc:
        raise CryoInputError(path, f"cannot be read ({exc.strerror})") from None
    i, n = 0, len(lines)
    while i < n:
        if not lines[i].strip().startswith("data_"):
            i += 1
            continue
        block = lines[i].strip()
        i += 1
        while i < n and not lines[i].strip().startswith(("loop_", "_")):
            i += 1  # starfile looks past anything, even another data_ line, for the block's first label
        if i >= n or not lines[i].strip().startswith("loop_"):
            while i < n and not lines[i].strip().startswith("data"):
                i += 1  # a simple block ends at the next line starting with "data"
            continue
        i += 1
        labels: list[str] = []
        while i < n and lines[i].strip().startswith("_"):
            label = lines[i].split()[0]
            if label in labels:
                raise CryoInputError(path, f"line {i + 1}: {block} lists the label {label} twice")
            labels.append(label)
            i += 1
        while i < n and not lines[i].strip().startswith("data_"):
            count = _count_values(lines[i])
            if count and count != len(labels):
                raise CryoInputError(
                    path, f"line {i + 1} has {count} values for the {len(labels)} labels of {block} (a damaged or cut-off file?)"
                )
            i += 1


_VALUE_SEPARATOR = re.compile(r"[ \t]+")


def _count_values(line: str) -> int:
    """How many values a loop row holds, as pandas splits it (at spaces and tabs; quotes group; '#' starts a comment)."""
    line = line.strip()
    if "'" not in line and '"' not in line:
        return sum(1 for value in _VALUE_SEPARATOR.split(line.split("#", 1)[0]) if value)
    import shlex

    lexer = shlex.shlex(line.replace("'", '"'), posix=True)
    lexer.whitespace, lexer.whitespace_split, lexer.commenters = " \t", True, "#"
    try:
        return sum(1 for _ in lexer)
    except ValueError:  # an unbalanced quote: let the parser have its say
        return 0


def _has_data_block(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return any(line.lstrip().startswith("data_") for line in fh)
    except OSError:
        return False


def sniff_star(path: str | os.PathLike, max_lines: int = 20000) -> set[str]:
    """Return the column labels of a STAR file's header lines, cheaply.

    Reads until the first data row after a particle/coordinate label, or at
    most ``max_lines`` lines (optics blocks can have hundreds of groups), and
    never raises; an empty set means 'not a STAR file we would open'.  Used by
    npe2's ``get_reader``.
    """
    wanted = {"rlnCoordinateX", "rlnImageName", CENTERED_COLUMNS[0]}
    labels: set[str] = set()
    try:
        with open(path, encoding="utf-8-sig", errors="strict") as fh:
            seen_data = False
            for i, line in enumerate(fh):
                if i >= max_lines:
                    break
                stripped = line.strip()
                if stripped.startswith("data_"):
                    seen_data = True
                elif seen_data and stripped.startswith("_"):
                    labels.add(stripped.split()[0][1:])
                elif labels & wanted and stripped and not stripped.startswith(("#", "loop_")):
                    break
    except (OSError, UnicodeDecodeError):
        return set()
    return labels


def _numeric(df: pd.DataFrame, columns: tuple[str, ...] | list[str], path: Path) -> None:
    """Convert columns to float in place, naming the first bad value."""
    for column in columns:
        if column not in df.columns:
            continue
        values = pd.to_numeric(df[column], errors="coerce")
        bad = values.isna() & df[column].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise CryoInputError(path, f"column {column} has a non-numeric value {df[column].iloc[row]!r} in row {row + 1}")
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise CryoInputError(path, f"column {column} has a missing value in row {row + 1}")
        floats = values.astype(float)
        # An integer label stays integer, so that writing the table back keeps RELION's type.
        whole = column in _WHOLE_NUMBER_LABELS and bool(_integral(floats).all())
        df[column] = floats.astype(np.int64) if whole else floats


def _integral(values: pd.Series) -> pd.Series:
    """Which values are whole numbers that an int64 holds exactly."""
    return np.isfinite(values) & (values == np.round(values)) & (values.abs() < 2.0**53)


def particle_table(path: str | os.PathLike, blocks: dict[str, Any] | None = None) -> ParticleTable:
    """Find the particle or coordinate block of a STAR file and its optics.

    Parameters
    ----------
    path : str or os.PathLike
        The STAR file.
    blocks : dict, optional
        Blocks already read with :func:`read_star`.

    Returns
    -------
    ParticleTable
        The rows and the optics.

    Raises
    ------
    CryoInputError
        If no block has coordinates, centred coordinates or image names, or
        that block is empty.
    """
    path = Path(path)
    blocks = read_star(path) if blocks is None else blocks
    keys = set(COORD_COLUMNS[:2]) | {"rlnImageName"}
    chosen: tuple[str, pd.DataFrame] | None = None
    empty_named: str | None = None
    for name, block in blocks.items():
        if not isinstance(block, pd.DataFrame):
            continue
        cols = set(block.columns)
        if cols & keys or CENTERED_COLUMNS[0] in cols:
            if len(block) == 0 and not set(COORD_COLUMNS[:2]) <= cols:
                empty_named = name
                continue
            # Prefer a block named for particles when several qualify.
            if chosen is None or name == "particles":
                chosen = (name, block)
    if chosen is None:
        if empty_named is not None:
            raise CryoInputError(path, f"block data_{empty_named} has no rows (empty loop)")
        found = ", ".join(f"data_{n}" for n in blocks) or "none"
        raise CryoInputError(
            path,
            "has no particle coordinates (rlnCoordinateX/Y or rlnCenteredCoordinateXAngst) "
            f"and no rlnImageName column; blocks: {found}",
        )
    name, table = chosen
    table = table.reset_index(drop=True).copy()
    optics = blocks.get("optics")
    if isinstance(optics, dict) and optics:  # a one-group optics block written without loop_
        optics = pd.DataFrame({k: [v] for k, v in optics.items()})
    if not isinstance(optics, pd.DataFrame) or optics.empty:
        optics = None
    if optics is not None and "rlnOpticsGroup" in optics.columns:
        optics = optics.copy()
        _numeric(optics, ["rlnOpticsGroup"], path)
        if optics["rlnOpticsGroup"].duplicated().any():
            raise CryoInputError(path, "the optics block lists an optics group twice")
    if "rlnOpticsGroup" in table.columns:
        _numeric(table, ["rlnOpticsGroup"], path)
    version = "3.1+" if optics is not None else "3.0"
    return ParticleTable(path=path, table=table, optics=optics, version=version, block_name=name)


@dataclass
class CoordinateSet:
    """The picks of one micrograph or tomogram.

    Attributes
    ----------
    name : str or None
        The micrograph or tomogram name (``rlnMicrographName`` /
        ``rlnTomoName``), ``None`` when the file names none.
    points : numpy.ndarray
        (N, 2) YX or (N, 3) ZYX coordinates in pixels, origin shifts applied.
    features : pandas.DataFrame
        Every other column of the rows, indexed 0..N-1.
    pixel_size : float or None
        Pixel size in Å of the coordinates, ``None`` when the file has none.
    notes : list of str
        Things the reader assumed or could not do, for the user.
    """

    name: str | None
    points: np.ndarray
    features: pd.DataFrame
    pixel_size: float | None
    notes: list[str] = field(default_factory=list)

    @property
    def ndim(self) -> int:
        """2 or 3."""
        return int(self.points.shape[1])

    def euler_angles(self) -> np.ndarray | None:
        """(N, 3) rot, tilt, psi in degrees when the file has them."""
        if all(c in self.features.columns for c in EULER_COLUMNS):
            return self.features[list(EULER_COLUMNS)].to_numpy(dtype=float)
        return None


def _find_tomogram_sizes(path: Path, names: set[str]) -> tuple[Path, pd.DataFrame] | None:
    """Look for a RELION 5 tomograms.star near ``path`` that describes ``names``: the file and its block."""
    candidates: list[Path] = []
    for parent in [path.parent, *list(path.parents)[1:4]]:
        candidates += sorted(parent.glob("tomograms.star")) + sorted(parent.glob("*/tomograms.star"))
    for candidate in candidates:
        try:
            blocks = read_star(candidate)
        except CryoInputError:
            continue
        for block in blocks.values():
            describes = isinstance(block, pd.DataFrame) and {"rlnTomoName", "rlnTomoSizeX"} <= set(block.columns)
            if describes and names <= set(block["rlnTomoName"].astype(str)):
                return candidate, block
    return None


def read_coordinates(path: str | os.PathLike, blocks: dict[str, Any] | None = None) -> list[CoordinateSet]:
    """Read the picks of a STAR file, one set per micrograph or tomogram.

    Handles RELION 3.0 (optics on each row), 3.1+ (optics block before or
    after the particles, several optics groups), RELION 4 tomography
    (``rlnCoordinateZ`` and ``rlnTomoName``) and RELION 5 centred
    coordinates in Å (placed in tomogram pixels when a ``tomograms.star``
    with ``rlnTomoSizeX/Y/Z`` is found beside the file or up to three
    directories above it).

    Parameters
    ----------
    path : str or os.PathLike
        The STAR file.
    blocks : dict, optional
        Blocks already read with :func:`read_star`.

    Returns
    -------
    list of CoordinateSet
        One set per distinct ``rlnTomoName`` / ``rlnMicrographName`` in file
        order, or a single set when the file names none.

    Raises
    ------
    CryoInputError
        For missing coordinate columns, non-numeric or missing values and
        empty loops.
    """
    pt = particle_table(path, blocks)
    path = pt.path
    table = pt.table
    notes: list[str] = []
    centred = CENTERED_COLUMNS[0] in table.columns and COORD_COLUMNS[0] not in table.columns
    if centred:
        axes = [c for c in CENTERED_COLUMNS if c in table.columns]
    else:
        axes = [c for c in COORD_COLUMNS if c in table.columns]
        if COORD_COLUMNS[0] not in axes or COORD_COLUMNS[1] not in axes:
            missing = [c for c in COORD_COLUMNS[:2] if c not in table.columns]
            raise CryoInputError(path, f"block data_{pt.block_name} lacks coordinate column(s) {', '.join(missing)}")
    ndim = len(axes)
    if len(table) == 0:  # a valid file with no picks (e.g. a micrograph where nothing was found)
        px = None
        if pt.optics is not None:
            px = next((float(pt.optics[c].iloc[0]) for c in COORD_PIXEL_SIZE_COLUMNS if c in pt.optics.columns), None)
        features = table.drop(columns=[c for c in table.columns if c in axes])
        return [CoordinateSet(None, np.zeros((0, ndim)), features.reset_index(drop=True), px, ["the file holds no picks"])]
    _numeric(table, axes, path)
    _numeric(table, [c for c in EULER_COLUMNS if c in table.columns], path)  # drawn as orientations
    origin_cols = [c for c in (ORIGIN_ANGST + ORIGIN_PIXELS) if c in table.columns]
    _numeric(table, origin_cols, path)

    pixel = pt.pixel_size(COORD_PIXEL_SIZE_COLUMNS)
    if pixel is not None and (~np.isfinite(pixel.to_numpy()) | (pixel.to_numpy() <= 0)).any():
        raise CryoInputError(path, "pixel size is missing, zero, infinite or not a number for some particles")

    xyz = table[axes].to_numpy(dtype=float)
    if centred:
        xyz, notes_c, pixel = _decentre(path, table, xyz, pixel)
        notes += notes_c
    # Shift by the refined origin: the particle centre is the pick minus the origin.
    image_px = pt.pixel_size(IMAGE_PIXEL_SIZE_COLUMNS)
    for i, (angst, pix) in enumerate(zip(ORIGIN_ANGST[:ndim], ORIGIN_PIXELS[:ndim])):
        if angst in table.columns:
            if pixel is None:
                notes.append(f"{angst} ignored: the file gives no pixel size")
            else:
                xyz[:, i] -= table[angst].to_numpy() / pixel.to_numpy()
        elif pix in table.columns:
            # rlnOriginX is in particle-image pixels; RELION 3.0 assumes they equal micrograph pixels.
            ratio = 1.0 if (pixel is None or image_px is None) else image_px.to_numpy() / pixel.to_numpy()
            xyz[:, i] -= table[pix].to_numpy() * ratio

    dropped = set(axes) | set(origin_cols)
    feature_cols = [c for c in table.columns if c not in dropped]
    group_col = next((c for c in GROUP_COLUMNS if c in table.columns), None)
    if group_col is not None:
        keys = table[group_col].astype(str)
        order = list(dict.fromkeys(keys))
    else:
        keys = pd.Series(["" for _ in range(len(table))])
        order = [""]

    sets = []
    for key in order:
        mask = (keys == key).to_numpy()
        sub_pixel = None if pixel is None else pixel[mask]
        if sub_pixel is not None and sub_pixel.nunique() > 1:
            notes.append(f"{key or path.name}: particles have several pixel sizes; the first, {sub_pixel.iloc[0]} Å, is used")
        features = table.loc[mask, feature_cols].reset_index(drop=True)
        sets.append(
            CoordinateSet(
                name=key or None,
                points=xyz[mask][:, ::-1].copy(),  # XYZ -> ZYX
                features=features,
                pixel_size=None if sub_pixel is None else float(sub_pixel.iloc[0]),
                notes=list(notes),
            )
        )
    return sets


def _tomogram_sizes(where: Path, sizes: pd.DataFrame, size_cols: list[str]) -> pd.DataFrame:
    """The tomograms.star rows indexed by tomogram name, checked: sizes and binnings are positive numbers."""
    missing = [c for c in size_cols if c not in sizes.columns]
    if missing:
        raise CryoInputError(where, f"has no {missing[0]} column, needed to place centred coordinates")
    info = sizes.copy()
    info.index = info["rlnTomoName"].astype(str)
    info = info[~info.index.duplicated()]
    checked = size_cols + [c for c in ("rlnTomoTomogramBinning",) if c in info.columns]
    _numeric(info, checked, where)
    if (info[checked] <= 0).any().any():
        raise CryoInputError(where, "a tomogram size or binning is zero or negative")
    return info


def _decentre(path: Path, table: pd.DataFrame, xyz: np.ndarray, pixel: pd.Series | None):
    """RELION 5 centred Å coordinates -> pixels of the (binned) tomogram."""
    notes: list[str] = []
    ts_pixel = pixel
    if ts_pixel is None:
        raise CryoInputError(path, "centred coordinates in Å need a pixel size (rlnTomoTiltSeriesPixelSize or rlnImagePixelSize)")
    names = set(table["rlnTomoName"].astype(str)) if "rlnTomoName" in table.columns else set()
    found = _find_tomogram_sizes(path, names) if names else None
    out = xyz / ts_pixel.to_numpy()[:, None]
    if found is None:
        notes.append("tomograms.star not found: coordinates are relative to the tomogram centre")
        return out, notes, ts_pixel
    size_cols = ["rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ"][: xyz.shape[1]]
    info = _tomogram_sizes(*found, size_cols)
    tomo = table["rlnTomoName"].astype(str)
    centre = info.loc[tomo, size_cols].to_numpy(dtype=float) / 2.0  # RELION's float centre, bin-1 pixels
    out = out + centre
    binning = (
        info.loc[tomo, "rlnTomoTomogramBinning"].to_numpy(dtype=float)
        if "rlnTomoTomogramBinning" in info.columns
        else np.ones(len(table))
    )
    out = out / binning[:, None]
    notes.append("centred coordinates placed in tomogram pixels using tomograms.star")
    return out, notes, ts_pixel * binning


def _format_column(values: pd.Series) -> pd.Series:
    """Floats as the shortest text that reads back to the same number (integer labels stay integers)."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype(int)
    if pd.api.types.is_float_dtype(values):
        if values.name in _WHOLE_NUMBER_LABELS:
            return values  # write_star makes them integers or names the bad value
        return values.map(lambda v: "nan" if pd.isna(v) else repr(float(v)))
    if pd.api.types.is_integer_dtype(values):
        return values
    return values.astype(str)


_RESERVED = ("_", "#", "$", "data_", "loop_", "save_", "global_", "stop_", "'", '"')


def _quote_if_reserved(text: str) -> str:
    """Quote strings a STAR parser would read as syntax (starfile quotes those with spaces)."""
    if text == "" or (text.lower().startswith(_RESERVED) and not any(c.isspace() for c in text)):
        return '"' + text.replace('"', "'") + '"'
    return text


def coordinates_table(
    points: np.ndarray,
    features: pd.DataFrame | None = None,
    micrograph_name: str | None = None,
) -> pd.DataFrame:
    """Build the particle rows of a coordinate file from ZYX/YX pixel coordinates.

    Parameters
    ----------
    points : numpy.ndarray
        (N, 2) YX or (N, 3) ZYX coordinates in pixels.
    features : pandas.DataFrame, optional
        Per-point values; each scalar column becomes a STAR column.
    micrograph_name : str, optional
        Written as ``rlnMicrographName`` (``rlnTomoName`` for 3D) unless the
        features already hold it.

    Returns
    -------
    pandas.DataFrame
        ``rlnCoordinateX/Y[/Z]`` then the feature columns.
    """
    points = np.asarray(points, dtype=float)
    if points.ndim != 2 or points.shape[1] not in (2, 3):
        raise ValueError(f"points must be (N, 2) or (N, 3), got shape {points.shape}")
    xyz = points[:, ::-1]
    table = pd.DataFrame({c: xyz[:, i] for i, c in enumerate(COORD_COLUMNS[: points.shape[1]])})
    if features is not None and len(features.columns):
        if len(features) != len(points):
            raise ValueError(f"{len(features)} feature rows for {len(points)} points")
        for column in features.columns:
            name = str(column).strip().replace(" ", "_")
            if name in table.columns or name in ORIGIN_ANGST + ORIGIN_PIXELS:
                continue
            values = features[column].reset_index(drop=True)
            if values.map(lambda v: np.ndim(v) != 0).any():
                continue  # vectors and arrays have no STAR column form
            if isinstance(values.dtype, pd.CategoricalDtype):
                values = values.astype(str)
            table[name] = values
    group = "rlnTomoName" if points.shape[1] == 3 else "rlnMicrographName"
    if micrograph_name and group not in table.columns:
        table[group] = micrograph_name
    return table


def write_coordinates(
    path: str | os.PathLike,
    points: np.ndarray,
    features: pd.DataFrame | None = None,
    pixel_size: float | None = None,
    *,
    layout: str = "3.1",
    micrograph_name: str | None = None,
    optics: pd.DataFrame | None = None,
    overwrite: bool = False,
) -> Path:
    """Write picks as a RELION coordinate STAR file, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.star`` file.
    points : numpy.ndarray
        (N, 2) YX or (N, 3) ZYX coordinates in pixels.
    features : pandas.DataFrame, optional
        Per-point columns to write (numbers, text, booleans as 0/1).
    pixel_size : float, optional
        Pixel size in Å of the coordinates.  In the ``"3.1"`` layout it is
        written to the optics block (``rlnMicrographPixelSize`` and
        ``rlnImagePixelSize``); in ``"3.0"`` as ``rlnDetectorPixelSize`` (µm)
        with ``rlnMagnification`` 10000 on every row.
    layout : {"3.1", "3.0"}
        RELION 3.1+ (``data_optics`` + ``data_particles``) or 3.0 (one
        ``data_`` block).
    micrograph_name : str, optional
        The micrograph or tomogram the picks belong to.
    optics : pandas.DataFrame, optional
        An optics block to keep (e.g. read from the original file); its
        pixel size columns are updated to ``pixel_size``.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    pathlib.Path
        The file written.
    """

    path = Path(path)
    if layout not in ("3.1", "3.0"):
        raise CryoInputError(path, f"unknown STAR layout {layout!r} (use 3.1 or 3.0)")
    points = np.asarray(points, dtype=float)
    if points.ndim != 2 or points.shape[1] not in (2, 3) or not np.isfinite(points).all():
        raise CryoInputError(path, "coordinates must be finite (N, 2) or (N, 3) values")
    if pixel_size is not None and not (np.isfinite(pixel_size) and pixel_size > 0):
        raise CryoInputError(path, f"pixel size must be positive, got {pixel_size}")
    table = coordinates_table(points, features, micrograph_name)
    if layout == "3.1":
        table = table.drop(columns=[c for c in ("rlnDetectorPixelSize", "rlnMagnification") if c in table.columns])
        if optics is not None and len(optics) == 1:
            optics = optics.copy()
        else:
            optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"]})
        if pixel_size is not None:
            optics["rlnMicrographPixelSize"] = float(pixel_size)
            optics["rlnImagePixelSize"] = float(pixel_size)
        optics["rlnOpticsGroup"] = optics["rlnOpticsGroup"].astype(int)
        table["rlnOpticsGroup"] = int(optics["rlnOpticsGroup"].iloc[0])
        data: Any = {"optics": _formatted(optics), "particles": _formatted(table)}
    else:
        for column in ("rlnOpticsGroup", "rlnImagePixelSize", "rlnMicrographPixelSize"):
            if column in table.columns:
                table = table.drop(columns=column)
        if pixel_size is not None:
            table["rlnMagnification"] = 10000.0
            table["rlnDetectorPixelSize"] = float(pixel_size)
        data = {"": _formatted(table)}
    write_star(data, path, overwrite=overwrite)
    return path


def write_star(
    blocks: dict[str, pd.DataFrame | dict[str, Any]],
    path: str | os.PathLike,
    overwrite: bool = False,
    float_format: str = "%.6f",
) -> Path:
    """Write STAR data blocks atomically, the same bytes for the same data.

    starfile's own header carries the time of writing, so two writes of the
    same table would differ; the header written here names the package only.
    Each column keeps its type: RELION's integer and boolean labels
    (:data:`INTEGER_LABELS`, :data:`BOOLEAN_LABELS`) are written as integers
    even when pandas holds them as floats (after a merge, a missing value or
    a conversion), and text is written as it is, quoted where a STAR parser
    would read it as syntax.

    Parameters
    ----------
    blocks : dict
        Block name -> table (loop block) or dict (simple block), as :func:`read_star` returns.
    path : str or os.PathLike
        The STAR file.
    overwrite : bool
        Whether an existing file may be replaced.
    float_format : str
        printf format of float columns.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    CryoInputError
        If an integer label holds a value that is not a whole number.
    """
    from starfile.writer import StarWriter

    from .. import __version__

    if not any(isinstance(block, (dict, pd.DataFrame)) for block in blocks.values()):
        blocks = {"": blocks}  # one simple block given as its label -> value dict, as starfile allows
    typed = {name: _typed_block(block, name, Path(path)) for name, block in blocks.items()}
    writer = StarWriter(typed, quote_all_strings=False, float_format=float_format)
    lines = [f"# written by napari-cryo {__version__}", "", "", *writer.data_block_generator()]
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines))
    return Path(path)


def _formatted(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({c: _format_column(df[c]) for c in df.columns})


def _typed_block(block: pd.DataFrame | dict[str, Any], name: str, path: Path) -> pd.DataFrame | dict[str, Any]:
    """A block as it must be written: integer labels as integers, booleans as 0/1, text quoted where needed."""
    if isinstance(block, dict):
        return {label: _typed_value(value, label, name, path) for label, value in block.items()}
    if not isinstance(block, pd.DataFrame):
        raise CryoInputError(path, f"block data_{name} is a {type(block).__name__}, not a table or a dict")
    columns = block.reset_index(drop=True)
    # By position: a file read with a label twice has two columns of that name.
    typed = pd.DataFrame({i: _typed_column(columns.iloc[:, i], str(label), name, path) for i, label in enumerate(block.columns)})
    typed.index = columns.index
    typed.columns = block.columns
    return typed


def _typed_column(values: pd.Series, label: str, block: str, path: Path) -> pd.Series:
    if label in _WHOLE_NUMBER_LABELS:
        return _integer_column(values, label, block, path)
    if pd.api.types.is_bool_dtype(values):
        return values.astype(np.int64)
    if pd.api.types.is_numeric_dtype(values):
        return values
    return values.map(lambda v: _quote_if_reserved(v) if isinstance(v, str) else v)


def _integer_column(values: pd.Series, label: str, block: str, path: Path) -> pd.Series:
    """An integer label's values as int64; non-integers are refused, never rounded."""
    if pd.api.types.is_bool_dtype(values):
        return values.astype(np.int64)
    if pd.api.types.is_integer_dtype(values) and not values.hasnans:
        return values.astype(np.int64)
    numbers = pd.to_numeric(values, errors="coerce").astype(float)
    good = _integral(numbers).to_numpy(dtype=bool)
    if not good.all():
        row = int(np.flatnonzero(~good)[0])
        value = values.iloc[row]
        value = value.item() if isinstance(value, np.generic) else value
        raise CryoInputError(path, f"{label} in data_{block} must hold integers; row {row + 1} has {value!r}, nothing was written")
    return numbers.astype(np.int64)


def _typed_value(value: Any, label: str, block: str, path: Path) -> Any:
    """One value of a simple (non-loop) block, typed like :func:`_typed_column`."""
    if label in _WHOLE_NUMBER_LABELS:
        return int(_integer_column(pd.Series([value]), label, block, path).iloc[0])
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    return _quote_if_reserved(value) if isinstance(value, str) else value


def convert_star_layout(
    src: str | os.PathLike, dst: str | os.PathLike, layout: str, *, overwrite: bool = False
) -> Path:
    """Rewrite a STAR particle/coordinate file in the RELION 3.0 or 3.1+ layout.

    Every column is kept.  3.0 -> 3.1+ gathers the optics columns of the
    rows into an optics block with one group per distinct combination;
    3.1+ -> 3.0 copies each group's optics columns onto its rows and adds
    ``rlnDetectorPixelSize``/``rlnMagnification`` from the pixel size.
    """

    src, dst = Path(src), Path(dst)
    pt = particle_table(src)
    table = pt.table.copy()
    _numeric(table, [c for c in NUMERIC_COLUMNS if c in table.columns], src)
    if layout == "3.0":
        if pt.optics is not None:
            for column in pt.optics.columns:
                if column in ("rlnOpticsGroup", "rlnOpticsGroupName") or column in table.columns:
                    continue
                table[column] = pt.optics_column(column).to_numpy()
            table = table.drop(columns=[c for c in ("rlnOpticsGroup",) if c in table.columns])
        px = pt.pixel_size(IMAGE_PIXEL_SIZE_COLUMNS)
        if "rlnDetectorPixelSize" not in table.columns and px is not None:
            table["rlnMagnification"] = 10000.0
            table["rlnDetectorPixelSize"] = px.to_numpy()
        _origins_to(table, "pixels", px, src)
        data: Any = {"": _formatted(table)}
    elif layout == "3.1":
        if pt.optics is not None:
            _origins_to(table, "angstrom", pt.pixel_size(IMAGE_PIXEL_SIZE_COLUMNS), src)
            data = {"optics": _formatted(pt.optics), pt.block_name or "particles": _formatted(table)}
        else:
            optics_cols = [c for c in OPTICS_COLUMNS if c in table.columns]
            px = pt.pixel_size(IMAGE_PIXEL_SIZE_COLUMNS)
            if px is not None:
                table["rlnImagePixelSize"] = px.round(6).to_numpy()
                if "rlnImagePixelSize" not in optics_cols:
                    optics_cols.append("rlnImagePixelSize")
            _origins_to(table, "angstrom", px, src)
            table = table.drop(columns=[c for c in ("rlnDetectorPixelSize", "rlnMagnification") if c in table.columns])
            optics_cols = [c for c in optics_cols if c in table.columns]
            if optics_cols:
                combos = table[optics_cols].drop_duplicates().reset_index(drop=True)
                combos.insert(0, "rlnOpticsGroup", np.arange(1, len(combos) + 1))
                combos.insert(1, "rlnOpticsGroupName", [f"opticsGroup{i}" for i in combos["rlnOpticsGroup"]])
                merged = table.merge(combos, on=optics_cols, how="left")
                table = merged.drop(columns=optics_cols + ["rlnOpticsGroupName"])
                optics = combos
            else:
                optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"]})
                table["rlnOpticsGroup"] = 1
            data = {"optics": _formatted(optics), "particles": _formatted(table)}
    else:
        raise CryoInputError(dst, f"unknown STAR layout {layout!r} (use 3.1 or 3.0)")
    write_star(data, dst, overwrite=overwrite)
    return dst


def _origins_to(table: pd.DataFrame, unit: str, pixel: pd.Series | None, path: Path) -> None:
    """Convert particle shifts in place: rlnOriginX/Y/Z (pixels, 3.0) <-> rlnOriginX/Y/ZAngst (3.1+)."""
    src_cols, dst_cols = (ORIGIN_PIXELS, ORIGIN_ANGST) if unit == "angstrom" else (ORIGIN_ANGST, ORIGIN_PIXELS)
    present = [(s, d) for s, d in zip(src_cols, dst_cols) if s in table.columns]
    if not present:
        return
    if pixel is None:
        raise CryoInputError(path, f"cannot convert {present[0][0]} without a pixel size")
    px = pixel.to_numpy(dtype=float)
    for s, d in present:
        values = pd.to_numeric(table[s], errors="coerce").to_numpy(dtype=float)
        table[d] = values * px if unit == "angstrom" else values / px
        del table[s]


#: Columns that must hold numbers wherever they appear.
NUMERIC_COLUMNS = (
    COORD_COLUMNS
    + CENTERED_COLUMNS
    + ORIGIN_ANGST
    + ORIGIN_PIXELS
    + EULER_COLUMNS
    + ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfBfactor", "rlnAutopickFigureOfMerit")
)

#: Columns that belong to the optics group in RELION 3.1+.
OPTICS_COLUMNS = (
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnImageSize",
    "rlnImageDimensionality",
    "rlnMicrographOriginalPixelSize",
    "rlnMicrographPixelSize",
    "rlnImagePixelSize",
    "rlnCtfDataAreCtfPremultiplied",
    "rlnBeamTiltX",
    "rlnBeamTiltY",
)
