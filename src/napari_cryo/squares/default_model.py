"""The default square-scoring model shipped with napari-cryo.

It was trained by ``benchmarks/train_default_squares.py`` on simulated atlases
(:mod:`napari_cryo.synthetic.atlas`), like the generic picker in
``picking/weights``: it ranks the squares of atlases that look like those
(400 mesh at about 0.5 µm/px); for real atlases, label some squares and train
a model of your own (``squares train`` or the widget's Train button).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import CryoInputError
from .model import SquareModel

DEFAULT_MODEL = "default.pt"
#: How the command line and the widget name the shipped model.
DEFAULT_NAME = "default (trained on synthetic atlases)"


def load_default_model() -> SquareModel:
    """The shipped square model.

    Raises
    ------
    CryoInputError
        If the installation lacks the weights file.
    """
    ref = resources.files("napari_cryo.squares") / "weights" / DEFAULT_MODEL
    with resources.as_file(ref) as path:
        if not Path(path).is_file():
            raise CryoInputError(path, "the default square model is missing from this installation")
        return SquareModel.load(path)
