"""The keys napari-cryo keeps in a layer's ``metadata``, in one place.

Readers write them, widgets and the writer read them; naming them here
keeps every module spelling them the same way.  The helpers take any object
with ``metadata``, ``scale`` and ``name`` (a napari layer, duck-typed), so
controllers use them without importing napari.
"""

from __future__ import annotations

from typing import Any

from .errors import CryoInputError

#: What readers and controllers return for napari to add: (data, layer keyword arguments, layer type).
LayerData = tuple[Any, dict[str, Any], str]

PIXEL_SIZE = "pixel_size"  # Å per pixel, or None when the file gave none
PIXEL_SIZE_KNOWN = "pixel_size_known"  # False when the scale is a placeholder of 1
MICROGRAPH_NAME = "micrograph_name"  # rlnMicrographName for STAR output
STAR_OPTICS = "star_optics"  # the optics table of a RELION 3.1+ STAR file
NOTES = "notes"  # what a reader had to assume, shown as warnings
SYNTHETIC = "synthetic"  # True for the built-in samples
PICKING_IMAGE = "picking_image"  # the image layer (its unique_id) a layer made by the picking widget belongs to
PICKING_ROLE = "picking_role"  # what such a layer holds: picks, rejected picks, probability, exclusions
SOURCE_PATH = "source_path"  # the file a layer was read from
TOMOGRAM = "tomogram"  # an annotation layer's tomogram, by layer name (layers made elsewhere set only this)
TOMOGRAM_ID = "tomogram_id"  # ... and by unique_id (layers made by the segmentation widget)
OUTPUT = "napari_cryo_output"  # "<tomogram id>/<role>/<feature>": finds an output layer again, renamed or not
SEGMENTATION_OF = "segmentation_of"  # the tomogram a segmentation layer belongs to
FEATURE = "feature"  # the feature a segmentation, preview or mesh layer shows
PREVIEW_Z = "z"  # the slice a preview layer shows
FEATURES_TABLE = "napari_cryo_features"  # a Labels layer's feature table (name, label value, colour)


def pixel_size_known(layer: Any) -> bool:
    """Whether a layer's scale is a real pixel size (layers from other plugins count as known)."""
    return (getattr(layer, "metadata", None) or {}).get(PIXEL_SIZE_KNOWN, True) is not False


def scale_is_placeholder(layer: Any) -> bool:
    """Whether a layer's scale says nothing about its pixel size.

    True when napari-cryo's reader marked it unknown, and for layers from
    other readers (napari's own TIFF, PNG and JPEG reader) whose scale is
    napari's default of 1 in every axis: no micrograph has 1 Å pixels by
    accident of a reader.
    """
    metadata = getattr(layer, "metadata", None) or {}
    if PIXEL_SIZE_KNOWN in metadata:
        return metadata[PIXEL_SIZE_KNOWN] is False
    return all(float(s) == 1.0 for s in getattr(layer, "scale", (1.0,)))


def layer_pixel_size(layer: Any) -> float:
    """The pixel size in Å of an image-like layer: its last scale.

    Raises
    ------
    CryoInputError
        When the layer's file gave no pixel size.
    """
    if not pixel_size_known(layer):
        raise CryoInputError(getattr(layer, "name", None), "has no pixel size; set the layer scale to the pixel size in Å")
    return float(layer.scale[-1])


def layer_kind(layer: Any) -> str:
    """The napari layer type in lower case ('image', 'labels', 'points', ...), from the public class name."""
    return type(layer).__name__.lower()
