"""2D particle picking: a BoxNet-style fully convolutional CNN with retraining.

Core modules (no Qt): ``preprocess`` (working pixel size, normalisation),
``model`` (the network and its file format), ``labels`` (training targets
from picks, false positives and painted masks), ``training`` (positive-
unlabelled training with augmentation and checkpoints), ``picks`` (probability
map -> coordinates), ``evaluate`` (precision/recall against ground truth),
``data`` (micrographs and pick files matched by name), ``session`` (one
micrograph's automatic, manual and rejected picks) and ``export`` (the picks
STAR files).  ``controller`` holds the widget's state and actions without Qt;
``_widget`` (napari) and ``_cli`` (``napari-cryo pick``) are the front ends.
"""
