"""Training one feature's model from painted slices.

:func:`train_feature` runs on the shared loop
(:mod:`napari_cryo.training_loop`): it yields
:class:`~napari_cryo.tasks.Progress` every batch, an
:class:`~napari_cryo.training_loop.EpochRecord` after every epoch and,
when asked, a :class:`SlicePreview` of the current slice, and returns the trained
:class:`~.model.SegmentationModel`.  Closing it (the widget's Cancel)
stops between two batches; the last epoch's checkpoint stays, and running
again with the same settings and data resumes from it.

The loss is binary cross-entropy plus a soft Dice term: thin features such
as membranes cover a few per cent of a box, and the Dice term keeps the
network from settling on "background everywhere".  An architecture with a
discriminator (pix2pix) is trained adversarially on top: the discriminator
sees (image, probability) pairs, real with the painted mask, fake with the
generator's output, as in Isola et al. (2017).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoints import cosine_lr
from ..errors import CryoInputError
from ..tasks import Progress
from ..training_loop import EpochRecord, Resumed, history_dicts, run_training
from . import architectures
from .dataset import AnnotatedTomogram, BoxSet, BoxSettings, sample_boxes
from .features import Feature
from .inference import predict_slice
from .model import SegmentationModel


@dataclass
class TrainSettings:
    """Training settings (defaults follow Ais where it has one).

    Attributes
    ----------
    epochs : int
        Passes over the training boxes.
    batch_size : int
        Boxes per step.
    lr : float
        Adam learning rate, decayed along a cosine.
    val_fraction : float
        Fraction of boxes held out for validation (0: none).
    adversarial_weight : float
        Weight of the generator's adversarial loss (architectures with a discriminator).
    boxes : BoxSettings
        How boxes are sampled from the painted slices.
    seed : int
        Random seed of initialisation and batch order.
    """

    epochs: int = 25
    batch_size: int = 32
    lr: float = 5e-3
    val_fraction: float = 0.0
    adversarial_weight: float = 0.05
    boxes: BoxSettings = field(default_factory=BoxSettings)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain data (stored in the model file)."""
        return asdict(self)


@dataclass
class SlicePreview:
    """The model's output on the slice the user is looking at, during training."""

    title: str
    z: int
    probabilities: np.ndarray


#: A callable the widget passes to get the slice to preview: (z, plane, pixel size, (mean, std)) or None.
PreviewSource = Callable[[], "tuple[int, np.ndarray, float, tuple[float, float]] | None"]


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus (1 - soft Dice) over the batch."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    dice = (2 * (prob * target).sum() + 1.0) / (prob.sum() + target.sum() + 1.0)
    return bce + (1.0 - dice)


def _run_key(feature: Feature, architecture: str, pixel_size: float, settings: TrainSettings, boxes: BoxSet) -> str:
    fingerprint = {
        "feature": [feature.name, feature.value],
        "architecture": architecture,
        "pixel_size": pixel_size,
        "settings": settings.to_dict(),
        "n": len(boxes),
        "sum": round(float(boxes.images.double().sum()), 3),
        "mask": round(float(boxes.masks.double().sum()), 3),
    }
    return hashlib.sha1(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


@torch.no_grad()
def _validation_loss(net: torch.nn.Module, boxes: BoxSet, batch: int, device: torch.device | str) -> float:
    net.eval()
    total = 0.0
    for i in range(0, len(boxes), batch):
        x, y = boxes.images[i : i + batch].to(device), boxes.masks[i : i + batch].to(device)
        total += float(segmentation_loss(net(x), y)) * len(x)
    net.train()
    return total / max(1, len(boxes))


def train_feature(
    tomograms: Sequence[AnnotatedTomogram],
    feature: Feature,
    architecture: str = architectures.DEFAULT,
    settings: TrainSettings | None = None,
    pixel_size: float | None = None,
    checkpoint: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    preview: PreviewSource | None = None,
    model: SegmentationModel | None = None,
) -> Generator[Progress | Resumed | EpochRecord | SlicePreview, None, SegmentationModel]:
    """Train the model of one feature.

    Parameters
    ----------
    tomograms : sequence of AnnotatedTomogram
        Painted tomograms, pooled.
    feature : Feature
        The feature to learn (its label value, name and colour).
    architecture : str
        Registry name of the architecture (ignored when ``model`` is given).
    settings : TrainSettings, optional
        Training settings.
    pixel_size : float, optional
        Å per pixel the model works at (default: the first tomogram's).
    checkpoint : path, optional
        Checkpoint file written after every epoch and resumed from.
    device : torch.device or str
        Where to train.
    preview : callable, optional
        Returns the slice to preview after each epoch (see :data:`PreviewSource`).
    model : SegmentationModel, optional
        Continue training this model instead of a new one.

    Yields
    ------
    Progress, Resumed, EpochRecord or SlicePreview

    Returns
    -------
    SegmentationModel
    """
    settings = settings or TrainSettings()
    pixel_size = float(pixel_size or (model.pixel_size if model else tomograms[0].pixel_size))
    box_settings = settings.boxes
    if model is not None:
        box_settings = BoxSettings(**{**asdict(box_settings), "box": model.box_size})
    yield Progress(0, None, "cutting boxes")
    boxes = sample_boxes(tomograms, feature.value, pixel_size, box_settings, feature.name)
    train_set, val_set = boxes.split(settings.val_fraction, settings.seed)
    if model is None:
        model = SegmentationModel.new(architecture, feature.name, box_settings.box, pixel_size, seed=settings.seed, colour=feature.colour)
    arch = architectures.get(model.architecture)
    net = model.net.to(device)
    disc = arch.discriminator(box_settings.box).to(device) if arch.discriminator else None
    modules = torch.nn.ModuleDict({"net": net} | ({"disc": disc} if disc is not None else {}))
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
    optimizers = [opt]
    if disc is not None:
        opt_d = torch.optim.Adam(disc.parameters(), lr=settings.lr, betas=(0.5, 0.999))
        optimizers.append(opt_d)
    run_key = _run_key(feature, model.architecture, pixel_size, settings, boxes)
    n = len(train_set)
    steps = max(1, n // settings.batch_size)
    total = settings.epochs * steps

    def batch_order(epoch: int) -> torch.Tensor:
        # The same order whether the run started at epoch 0 or resumed at `epoch`.
        gen = torch.Generator().manual_seed(settings.seed)
        for _ in range(epoch + 1):
            order = torch.randperm(n, generator=gen)
        return order

    def train_epoch(epoch: int) -> Generator[Progress | SlicePreview, None, float]:
        net.train()
        order = batch_order(epoch)
        losses = []
        for s in range(steps):
            lr = cosine_lr(settings.lr, epoch * steps + s, total)
            for o in optimizers:
                for group in o.param_groups:
                    group["lr"] = lr
            idx = order[s * settings.batch_size : (s + 1) * settings.batch_size]
            x, y = train_set.images[idx].to(device), train_set.masks[idx].to(device)
            logits = net(x)
            loss = segmentation_loss(logits, y)
            if disc is not None:
                fake = torch.cat([x, torch.sigmoid(logits)], dim=1)
                real = torch.cat([x, y], dim=1)
                pred_fake = disc(fake.detach())
                pred_real = disc(real)
                loss_d = 0.5 * (
                    F.binary_cross_entropy_with_logits(pred_real, torch.ones_like(pred_real))
                    + F.binary_cross_entropy_with_logits(pred_fake, torch.zeros_like(pred_fake))
                )
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
                pred_gen = disc(fake)
                loss = loss + settings.adversarial_weight * F.binary_cross_entropy_with_logits(pred_gen, torch.ones_like(pred_gen))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if not np.isfinite(losses[-1]):
                raise CryoInputError(None, f"training of '{feature.name}' diverged (loss is {losses[-1]}); try a lower learning rate")
            yield Progress(epoch * steps + s + 1, total, f"{feature.name} epoch {epoch + 1}/{settings.epochs} loss {np.mean(losses):.3f}")
        if preview is not None:
            source = preview()
            if source is not None:
                z, plane, plane_pixel, stats = source
                model.net = net
                yield SlicePreview(feature.name, z, predict_slice(model, plane, plane_pixel, stats, device))
        return float(np.mean(losses))

    def validate(_epoch: int) -> float:
        return math.nan if val_set is None else _validation_loss(net, val_set, settings.batch_size, device)

    history = yield from run_training(modules, optimizers, settings.epochs, train_epoch, validate, checkpoint, run_key)
    net.eval()
    model.net = net.cpu()
    model.history = history_dicts(history)
    model.training = {
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "lr": settings.lr,
        "boxes": asdict(box_settings),
        "n_boxes": len(boxes),
        "val_fraction": settings.val_fraction,
        "feature_value": feature.value,
    }
    return model
