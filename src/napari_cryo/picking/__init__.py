"""2D particle picking: a BoxNet-style fully convolutional CNN with retraining.

Core modules (no Qt): ``preprocess`` (working pixel size, normalisation),
``model`` (the network and its file format), ``labels`` (training targets
from picks, false positives and painted masks), ``training`` (positive-
unlabelled training with augmentation and checkpoints), ``picks`` (probability
map -> coordinates), ``evaluate`` (precision/recall against ground truth).
``_widget`` and ``_cli`` are the thin napari and command-line front ends.
"""
