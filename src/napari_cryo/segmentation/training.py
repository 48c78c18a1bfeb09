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

from ..errors import CryoInputError
from ..tasks import Progress
from ..training_loop import STOP_CANCELLED, EarlyStopping, EpochRecord, Resumed, Stopped, history_dicts, run_training
from . import architectures
from .augment import CUT_FACTOR, Augmentation, augment_batch
from .dataset import AnnotatedTomogram, BoxSet, BoxSettings, normalisation, sample_boxes
from .features import Feature
from .inference import model_planes, predict_planes, predict_slice
from .model import SegmentationModel


@dataclass
class TrainSettings:
    """Training settings: the defaults are the recipe that holds on tomograms from other sources.

    Attributes
    ----------
    epochs : int
        Most passes over the training boxes (early stopping usually ends sooner).
    batch_size : int
        Boxes per step.
    lr : float
        Adam learning rate, halved when the validation loss stalls for ``lr_patience`` epochs.
    val_fraction : float
        Fraction of the painted slices held out to validate, stop early and calibrate (0: none;
        then every epoch up to ``epochs`` or the budget runs and the last one is kept).
    adversarial_weight : float
        Weight of the generator's adversarial loss (architectures with a discriminator).
    boxes : BoxSettings
        How boxes are sampled from the painted slices.
    seed : int
        Random seed of initialisation, batch order and augmentation.
    patience : int
        Stop when the validation loss has not improved for this many epochs (0: never).
    budget_s : float or None
        Stop when the next epoch would end past this many seconds of training (None: no limit).
    lr_patience : int
        Epochs without improvement before the learning rate is halved.
    min_steps : int
        Fewest steps in an epoch (few painted slices: boxes repeat, augmented differently).
    max_steps : int
        Most steps in an epoch (many painted slices: each epoch sees a random part), so that
        validation, early stopping and the budget act every few seconds.
    augmentation : Augmentation
        What the boxes go through on the fly (:mod:`.augment`).
    """

    epochs: int = 100
    batch_size: int = 32
    lr: float = 2e-3
    val_fraction: float = 0.2
    adversarial_weight: float = 0.05
    boxes: BoxSettings = field(default_factory=lambda: BoxSettings(context=DEFAULT_CONTEXT, cut=0))
    seed: int = 0
    patience: int = 6
    budget_s: float | None = 150.0
    lr_patience: int = 3
    min_steps: int = 20
    max_steps: int = 40
    augmentation: Augmentation = field(default_factory=Augmentation)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (stored in the model file)."""
        return asdict(self)

    @classmethod
    def fixed(cls, epochs: int, **kwargs: Any) -> TrainSettings:
        """Exactly ``epochs`` epochs: no validation, early stopping or budget (tests, scripted runs)."""
        return cls(epochs=epochs, val_fraction=0.0, patience=0, budget_s=None, **kwargs)


@dataclass
class SlicePreview:
    """The model's output on the slice the user is looking at, during training."""

    title: str
    z: int
    probabilities: np.ndarray


#: A callable the widget passes to get the slice to preview: (z, volume, pixel size, (mean, std)) or None.
PreviewSource = Callable[[], "tuple[int, np.ndarray, float, tuple[float, float]] | None"]

#: Slices a new model sees by default (see :class:`~.model.ContextNet`).
DEFAULT_CONTEXT = 5


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


def _centre(images: torch.Tensor, box: int) -> torch.Tensor:
    """The centre ``box`` x ``box`` of cut boxes (what validation and calibration look at)."""
    lo = (images.shape[-1] - box) // 2
    return images[..., lo : lo + box, lo : lo + box]


@torch.no_grad()
def _validation(net: torch.nn.Module, boxes: BoxSet, box: int, batch: int, device: torch.device | str) -> tuple[float, torch.Tensor]:
    """Mean loss on the validation boxes (centre crops, not augmented) and their logits."""
    net.eval()
    total, logits = 0.0, []
    for i in range(0, len(boxes), batch):
        x, y = _centre(boxes.images[i : i + batch], box).to(device), _centre(boxes.masks[i : i + batch], box).to(device)
        out = net(x)
        total += float(segmentation_loss(out, y)) * len(x)
        logits.append(out.float().cpu())
    net.train()
    return total / max(1, len(boxes)), torch.cat(logits)


def _held_out_planes(model: SegmentationModel, tomograms: Sequence[AnnotatedTomogram], val_set: BoxSet, value: int,
                     device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits and the painted masks on the whole held-out slices.

    Calibrating on boxes would follow the sampling, which favours the feature; whole
    slices have the feature as often as the tomogram has it.
    """
    logits, masks = [], []
    stats: dict[int, tuple[float, float]] = {}
    for sid in np.unique(val_set.slices):
        t, z = val_set.slice_keys[int(sid)]
        tomo = tomograms[t]
        if t not in stats:
            stats[t] = normalisation(tomo.volume)
        prob = predict_planes(model, model_planes(model, tomo.volume, z, z + 1, tomo.pixel_size), tomo.pixel_size, stats[t], device)[0]
        p = torch.from_numpy(prob).clamp(1e-6, 1 - 1e-6)
        logits.append(torch.log(p / (1 - p)).reshape(-1))
        masks.append(torch.from_numpy(np.asarray(tomo.labels[z]) == value).reshape(-1).float())
    return torch.cat(logits), torch.cat(masks)


def calibration_offset(logits: torch.Tensor, masks: torch.Tensor) -> tuple[float, float]:
    """The logit offset that puts the best-Dice threshold at probability 0.5, and that Dice.

    Parameters
    ----------
    logits : torch.Tensor
        The network's outputs on validation boxes.
    masks : torch.Tensor
        Their painted masks (same shape, 0 or 1).

    Returns
    -------
    tuple of float
        (offset, Dice at the best threshold); (0, NaN) when the masks are empty.
    """
    truth = masks.reshape(-1) > 0.5
    n_true = int(truth.sum())
    if n_true == 0:
        return 0.0, math.nan
    z = logits.reshape(-1).float()
    # Dice of "logit >= t" for every t among the logits: sort once, accumulate.
    order = torch.argsort(z, descending=True)
    hits = torch.cumsum(truth[order].float(), 0)
    predicted = torch.arange(1, len(z) + 1, dtype=torch.float32)
    dice = 2 * hits / (predicted + n_true)
    best = int(torch.argmax(dice))
    # Halfway between the last logit kept and the first dropped, clamped to sensible probabilities.
    cut = z[order[best]] if best + 1 >= len(z) else 0.5 * (z[order[best]] + z[order[best + 1]])
    cut = float(cut.clamp(-4.0, 4.0))
    return -cut, float(dice[best])


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
) -> Generator[Progress | Resumed | EpochRecord | Stopped | SlicePreview, None, SegmentationModel]:
    """Train the model of one feature.

    Boxes are cut from the painted slices (:func:`~.dataset.sample_boxes`), a fraction of the
    slices is held out, every batch is augmented afresh (:mod:`.augment`), training stops when
    the validation loss stops improving, the time budget is spent or after ``epochs``, the best
    epoch's weights are kept, and the output is calibrated on the held-out slices (the
    threshold with the best Dice becomes probability 0.5).

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
        Continue training this model instead of a new one (its box size and context win).

    Yields
    ------
    Progress, Resumed, EpochRecord, Stopped or SlicePreview

    Returns
    -------
    SegmentationModel
    """
    settings = settings or TrainSettings()
    pixel_size = float(pixel_size or (model.pixel_size if model else tomograms[0].pixel_size))
    box_settings = settings.boxes
    if model is not None:
        box_settings = BoxSettings(**{**asdict(box_settings), "box": model.box_size, "context": model.context})
    if box_settings.context < 1 or box_settings.context % 2 == 0:
        raise CryoInputError(None, f"context must be an odd number of slices, not {box_settings.context}")
    box = box_settings.box
    augmenting = settings.augmentation != Augmentation.none()
    if augmenting and not box_settings.cut:
        box_settings = BoxSettings(**{**asdict(box_settings), "cut": int(math.ceil(box * CUT_FACTOR / 2) * 2)})
    yield Progress(0, None, "cutting boxes")
    boxes = sample_boxes(tomograms, feature.value, pixel_size, box_settings, feature.name)
    train_set, val_set = boxes.split(settings.val_fraction, settings.seed)
    if model is None:
        model = SegmentationModel.new(architecture, feature.name, box, pixel_size, seed=settings.seed, colour=feature.colour, context=box_settings.context)
    arch = architectures.get(model.architecture)
    net = model.net.to(device)
    disc = arch.discriminator(box).to(device) if arch.discriminator else None
    modules = torch.nn.ModuleDict({"net": net} | ({"disc": disc} if disc is not None else {}))
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
    optimizers = [opt]
    if disc is not None:
        opt_d = torch.optim.Adam(disc.parameters(), lr=settings.lr, betas=(0.5, 0.999))
        optimizers.append(opt_d)
    run_key = _run_key(feature, model.architecture, pixel_size, settings, boxes)
    n = len(train_set)
    steps = max(1, n // settings.batch_size, settings.min_steps if augmenting else 1)
    if augmenting:
        steps = min(steps, max(1, settings.max_steps))
    total = settings.epochs * steps
    centre = model.context // 2

    def batch_order(epoch: int) -> torch.Tensor:
        # The same order whether the run started at epoch 0 or resumed at `epoch`.
        gen = torch.Generator().manual_seed(settings.seed * 100_003 + epoch)
        reps = math.ceil(steps * settings.batch_size / n)
        return torch.cat([torch.randperm(n, generator=gen) for _ in range(reps)])

    def batch(order: torch.Tensor, s: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = order[s * settings.batch_size : (s + 1) * settings.batch_size]
        x, y = train_set.images[idx], train_set.masks[idx]
        if augmenting:
            x, y = augment_batch(x, y, box, settings.augmentation, gen)
        else:
            x, y = _centre(x, box), _centre(y, box)
        return x.to(device), y.to(device)

    def train_epoch(epoch: int) -> Generator[Progress | SlicePreview, None, float]:
        net.train()
        order = batch_order(epoch)
        gen = torch.Generator().manual_seed(settings.seed * 100_003 + epoch + 7)
        losses = []
        for s in range(steps):
            x, y = batch(order, s, gen)
            logits = net(x)
            loss = segmentation_loss(logits, y)
            if disc is not None:
                image = x[:, centre : centre + 1]
                fake = torch.cat([image, torch.sigmoid(logits)], dim=1)
                real = torch.cat([image, y], dim=1)
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
            yield Progress(epoch * steps + s + 1, total, f"{feature.name} epoch {epoch + 1} loss {np.mean(losses):.3f}")
        if preview is not None:
            source = preview()
            if source is not None:
                z, volume, volume_pixel, stats = source
                model.net = net
                yield SlicePreview(feature.name, z, predict_slice(model, volume, z, volume_pixel, stats, device))
        return float(np.mean(losses))

    def validate(_epoch: int) -> float:
        return math.nan if val_set is None else _validation(net, val_set, box, settings.batch_size, device)[0]

    stopping = EarlyStopping(
        patience=settings.patience or None,
        budget_s=settings.budget_s,
        lr_patience=settings.lr_patience or None,
    )
    records: list[EpochRecord] = []
    loop = run_training(modules, optimizers, settings.epochs, train_epoch, validate, checkpoint, run_key, stopping)
    try:
        while True:
            item = next(loop)
            if isinstance(item, Resumed):
                records[:] = list(item.history)
            elif isinstance(item, EpochRecord):
                records.append(item)
            yield item
    except StopIteration:
        pass
    net.eval()
    offset, val_dice = 0.0, math.nan
    model.net = net
    model.logit_offset = 0.0
    if val_set is not None:
        by_slices = val_set.slices is not None and train_set.slices is not None and not set(val_set.slices) & set(train_set.slices)
        if by_slices and val_set.slice_keys:
            logits, masks = _held_out_planes(model, tomograms, val_set, feature.value, device)
        else:
            _, logits = _validation(net, val_set, box, settings.batch_size, device)
            masks = _centre(val_set.masks, box)
        offset, val_dice = calibration_offset(logits, masks)
    model.net = net.cpu()
    model.logit_offset = offset
    model.history = history_dicts(records)
    model.training = {
        "epochs": len(records),
        "max_epochs": settings.epochs,
        "stopped": stopping.reason or STOP_CANCELLED,
        "best_epoch": stopping.best_epoch,
        "batch_size": settings.batch_size,
        "lr": settings.lr,
        "boxes": asdict(box_settings),
        "n_boxes": len(boxes),
        "val_fraction": settings.val_fraction,
        "validation_boxes": 0 if val_set is None else len(val_set),
        "validation_dice": None if math.isnan(val_dice) else round(val_dice, 4),
        "budget_s": settings.budget_s,
        "augmentation": settings.augmentation.to_dict(),
        "feature_value": feature.value,
    }
    return model
