"""Training the picker: patches, augmentation, positive-unlabelled loss, checkpoints.

Training runs on the shared loop (:mod:`napari_cryo.training_loop`): a
generator yielding :class:`~napari_cryo.tasks.Progress` and, after each
epoch, an :class:`~napari_cryo.training_loop.EpochRecord`; it returns the
trained :class:`~.model.PickerModel`.  Closing the generator (the
widget's Cancel) stops it between two steps; the last checkpoint stays.

Training finishes the job by itself: it runs until a validation split of
the user's own picks stops improving (``patience`` epochs), the time budget
is spent, or ``epochs`` (a cap) are done, whichever comes first, and keeps
the best epoch's weights (:class:`~napari_cryo.training_loop.EarlyStopping`).
The learning rate is constant and halves when the validation stalls, since
the last epoch is not known in advance.

The validation split holds out particles, not micrographs: a fifth of the
labelled particles (of at most :data:`MAX_VALIDATION_MICROGRAPHS`
micrographs) lose their labels for training, disc and ring alike, so a user
who picked one micrograph can validate too.  To the network they are then
what every unpicked particle is, an unlabelled one; whether it still finds
them is exactly what positive-unlabelled training can lose by going on too
long.  After each epoch the network runs over those micrographs and
:func:`validation_scores` measures, on the held-out labels only, a
cross-entropy (particle discs against their background rings, each half of
the loss) and the held-out particles' recall at the model's threshold.

The loss has two parts.

* Labelled pixels (particle discs, false positives, the rings around
  labelled particles, painted junk) get a class-weighted cross-entropy, with
  background weighted by ``(n_particle / n_background) ** (1/3)`` as in
  BoxNet and false positives weighted up.
* Unlabelled pixels, which still hold the particles the user did not pick,
  get the non-negative positive-unlabelled risk of Kiryo et al. (2017), as
  Topaz does: with ``pi`` the expected fraction of unlabelled pixels that are
  particle pixels, ``R = pi * R_P(+) + max(0, R_U(-) - pi * R_P(-))``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..checkpoints import cosine_lr
from ..errors import CryoInputError
from ..tasks import Progress
from ..training_loop import STOP_CANCELLED, EarlyStopping, EpochRecord, Resumed, Stopped, history_dicts, run_training
from .labels import FALSE_POSITIVE, UNLABELLED, TrainingMicrograph
from .model import BACKGROUND, JUNK, PARTICLE, PickerModel
from .preprocess import DIAMETER_PX

#: Held-out particles come from at most this many micrographs, so validation stays cheap.
MAX_VALIDATION_MICROGRAPHS = 10
#: Fewer labelled particles than this: no validation split (too few to hold any out).
MIN_VALIDATION_PARTICLES = 10
#: Learning-rate schedules: constant, halved after ``lr_patience`` epochs without improvement;
#: a cosine over ``epochs`` (for a fixed number of epochs); constant.
SCHEDULES = ("plateau", "cosine", "constant")


@dataclass
class TrainConfig:
    """Training settings.

    Attributes
    ----------
    epochs : int
        At most this many passes of ``steps_per_epoch`` batches.
    steps_per_epoch : int
        Batches per epoch (and between two validations).
    batch_size : int
        Patches per batch.
    patch : int
        Patch size in working pixels (larger than the ~107 px receptive field).
    lr : float
        Adam learning rate (lower when fine-tuning).
    val_fraction : float
        Fraction of the labelled particles held out for validation (0: none).
    patience : int or None
        Stop after this many epochs without a better validation (None or 0: never).
    budget_s : float or None
        Stop when the next epoch would end past this many seconds of training (None: no budget).
    schedule : str
        One of :data:`SCHEDULES`.
    lr_patience : int
        With the plateau schedule: halve the learning rate after this many epochs without improvement.
    false_positive_weight : float
        Weight of pixels at user-marked false positives.
    pu_weight : float
        Weight of the positive-unlabelled term.
    augment : bool
        Random rotation, flips, anisotropic scale, shear and noise.
    seed : int
        Random seed of patch sampling, augmentation and the validation split.
    """

    epochs: int = 100
    steps_per_epoch: int = 25
    batch_size: int = 8
    patch: int = 128
    lr: float = 1e-3
    val_fraction: float = 0.2
    patience: int | None = 6
    budget_s: float | None = 300.0
    schedule: str = "plateau"
    lr_patience: int = 3
    false_positive_weight: float = 4.0
    pu_weight: float = 1.0
    augment: bool = True
    seed: int = 0

    @classmethod
    def fixed(cls, epochs: int, **kwargs: Any) -> "TrainConfig":
        """Exactly ``epochs`` epochs: no patience, no budget, a cosine schedule (the best epoch is still kept)."""
        return cls(**{"epochs": epochs, "patience": None, "budget_s": None, "schedule": "cosine", **kwargs})

    def check(self) -> None:
        """Raise :class:`CryoInputError` for settings out of range."""
        problems = [
            (self.epochs < 1, f"the number of epochs must be at least 1, got {self.epochs}"),
            (self.steps_per_epoch < 1, f"steps per epoch must be at least 1, got {self.steps_per_epoch}"),
            (self.patience is not None and self.patience < 0, f"patience must be 0 or more epochs, got {self.patience}"),
            (self.budget_s is not None and not self.budget_s > 0, f"the time budget must be positive, got {self.budget_s}"),
            (not 0 <= self.val_fraction < 1, f"the validation fraction must be from 0 to below 1, got {self.val_fraction}"),
            (self.schedule not in SCHEDULES, f"the schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (not self.lr > 0, f"the learning rate must be positive, got {self.lr}"),
        ]
        for bad, message in problems:
            if bad:
                raise CryoInputError(None, message)

    def key(self) -> str:
        """A short hash identifying the settings (a checkpoint resumes only the same run).

        When to stop (patience, budget; the number of epochs unless a cosine schedule depends
        on it) is left out: a run may be resumed with a longer budget or another patience.
        """
        values = asdict(self)
        for name in ("patience", "budget_s") + (() if self.schedule == "cosine" else ("epochs",)):
            values.pop(name)
        return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class ValidationMicrograph:
    """The held-out labels of one micrograph.

    Attributes
    ----------
    image : numpy.ndarray
        The working-resolution image (shared with its training micrograph).
    target : numpy.ndarray
        ``PARTICLE`` at the held-out particles' discs, ``BACKGROUND`` in their rings, ``UNLABELLED`` elsewhere.
    n_particles : int
        Held-out particles.
    """

    image: np.ndarray
    target: np.ndarray
    n_particles: int


def hold_out_particles(
    micrographs: Sequence[TrainingMicrograph], fraction: float, seed: int = 0
) -> tuple[list[TrainingMicrograph], list[ValidationMicrograph]]:
    """Split the labelled particles into training and validation.

    ``fraction`` of the labelled particles of up to :data:`MAX_VALIDATION_MICROGRAPHS`
    micrographs (at least one per micrograph with two or more) lose their disc and
    background ring in the training targets, which become unlabelled there; the
    validation targets hold just those labels.  False positives and painted junk
    stay in training.  No split with ``fraction`` 0 or fewer than
    :data:`MIN_VALIDATION_PARTICLES` labelled particles.

    Returns
    -------
    train : list of TrainingMicrograph
        Every micrograph, with the held-out labels removed (new objects; the inputs are not changed).
    val : list of ValidationMicrograph
        The micrographs with held-out particles.
    """
    total = sum(m.n_labelled for m in micrographs)
    if fraction <= 0 or total < MIN_VALIDATION_PARTICLES:
        return list(micrographs), []
    rng = np.random.default_rng(seed)
    candidates = [i for i, m in enumerate(micrographs) if m.n_labelled >= 2]
    chosen = set(rng.permutation(candidates)[:MAX_VALIDATION_MICROGRAPHS].tolist())
    ring = 0.5 * DIAMETER_PX
    train_set, val_set = [], []
    for i, m in enumerate(micrographs):
        labels, n = ndimage.label(m.target == PARTICLE)
        if i not in chosen or n < 2:
            train_set.append(m)
            continue
        centres = np.asarray(ndimage.center_of_mass(np.ones_like(labels), labels, np.arange(1, n + 1)), dtype=float).reshape(-1, 2)
        n_out = min(n - 1, max(1, int(round(fraction * n))))
        out = np.zeros(n + 1, dtype=bool)
        out[1 + rng.choice(n, n_out, replace=False)] = True
        disc = out[labels]
        near_out = _within(m.target.shape, centres[out[1:]], ring)
        near_kept = _within(m.target.shape, centres[~out[1:]], ring)
        removed_ring = near_out & ~near_kept & (m.target == BACKGROUND)
        train_target = m.target.copy()
        train_target[disc | removed_ring] = UNLABELLED
        val_target = np.full(m.target.shape, UNLABELLED, dtype=np.int8)
        val_target[removed_ring] = BACKGROUND
        val_target[disc] = PARTICLE
        train_set.append(TrainingMicrograph(m.image, train_target, max(0, m.n_labelled - n_out), m.expected_particles, m.name))
        val_set.append(ValidationMicrograph(m.image, val_target, n_out))
    return train_set, val_set


def _within(shape: tuple[int, ...], centres: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within ``radius`` of any centre."""
    near = np.zeros(shape, dtype=bool)
    if len(centres):
        seeds = np.zeros(shape, dtype=bool)
        idx = np.clip(np.round(centres).astype(int), 0, np.array(shape) - 1)
        seeds[idx[:, 0], idx[:, 1]] = True
        near = ndimage.distance_transform_edt(~seeds) <= radius
    return near


@torch.no_grad()
def validation_scores(
    model: PickerModel, micrographs: Sequence[ValidationMicrograph], device: torch.device | str = "cpu", threshold: float | None = None
) -> tuple[float, float]:
    """Loss and recall of the held-out particles.

    Returns
    -------
    loss : float
        Half the mean ``-log p(particle)`` over the held-out discs plus half the mean
        ``-log(1 - p(particle))`` over their rings (NaN without held-out labels).
    recall : float
        Fraction of held-out particles whose disc reaches ``threshold`` (default the
        model's) somewhere: those the model would pick.
    """
    threshold = model.threshold if threshold is None else threshold
    model.net.eval()
    pos_sum = neg_sum = 0.0
    n_pos = n_neg = found = total = 0
    for m in micrographs:
        x = torch.from_numpy(np.ascontiguousarray(m.image, dtype=np.float32))[None, None].to(device)
        log_p = torch.log_softmax(model.net(x), dim=1)[0]
        log_part = log_p[PARTICLE].cpu().numpy()
        log_not = torch.logsumexp(log_p[[BACKGROUND, JUNK]], dim=0).cpu().numpy()
        pos, neg = m.target == PARTICLE, m.target == BACKGROUND
        pos_sum += float(-log_part[pos].sum())
        neg_sum += float(-log_not[neg].sum())
        n_pos += int(pos.sum())
        n_neg += int(neg.sum())
        labels, n = ndimage.label(pos)
        if n:
            peak = np.asarray(ndimage.maximum(np.exp(log_part), labels, np.arange(1, n + 1)))
            found += int(np.count_nonzero(peak >= threshold))
            total += n
    if not n_pos:
        return math.nan, math.nan
    loss = 0.5 * pos_sum / n_pos + (0.5 * neg_sum / n_neg if n_neg else 0.0)
    return float(loss), found / total


class PatchSampler:
    """Random, augmented training patches from prepared micrographs."""

    def __init__(self, micrographs: Sequence[TrainingMicrograph], config: TrainConfig, seed: int) -> None:
        self.mics = [m for m in micrographs]
        self.config = config
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)
        # Source crops are larger than patches so that rotation never samples outside them.
        self.src = int(math.ceil(config.patch * 1.6)) if config.augment else config.patch
        weights = np.array([max(1, m.target.size) for m in self.mics], dtype=float)
        self.pick_p = weights / weights.sum()
        self.centres = [np.argwhere(m.target == PARTICLE) for m in self.mics]

    def _crop(self, arr: np.ndarray, cy: int, cx: int, fill: float) -> np.ndarray:
        s = self.src
        out = np.full((s, s), fill, dtype=arr.dtype)
        y0, x0 = cy - s // 2, cx - s // 2
        ys, xs = max(0, y0), max(0, x0)
        ye, xe = min(arr.shape[0], y0 + s), min(arr.shape[1], x0 + s)
        if ye > ys and xe > xs:
            out[ys - y0 : ye - y0, xs - x0 : xe - x0] = arr[ys:ye, xs:xe]
        return out

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images (B,1,P,P), targets (B,P,P) and per-patch priors (B,)."""
        images, targets, priors = [], [], []
        for _ in range(self.config.batch_size):
            k = int(self.rng.choice(len(self.mics), p=self.pick_p))
            m = self.mics[k]
            # Half the patches are centred near a labelled particle, so rare positives are seen.
            if len(self.centres[k]) and self.rng.random() < 0.5:
                cy, cx = self.centres[k][self.rng.integers(len(self.centres[k]))]
                cy += int(self.rng.integers(-self.config.patch // 3, self.config.patch // 3 + 1))
                cx += int(self.rng.integers(-self.config.patch // 3, self.config.patch // 3 + 1))
            else:
                cy, cx = int(self.rng.integers(0, m.image.shape[0])), int(self.rng.integers(0, m.image.shape[1]))
            images.append(self._crop(m.image, cy, cx, 0.0))
            targets.append(self._crop(m.target, cy, cx, UNLABELLED))
            priors.append(m.prior)
        img = torch.from_numpy(np.stack(images))[:, None].float()
        tgt = torch.from_numpy(np.stack(targets).astype(np.float32))[:, None]
        img, tgt = self._augment(img, tgt)
        return img, tgt[:, 0].round().long(), torch.tensor(priors, dtype=torch.float32)

    def _augment(self, img: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, p, s = img.shape[0], self.config.patch, self.src
        if not self.config.augment:
            return img, tgt
        theta = torch.rand(b, generator=self.gen) * 2 * math.pi
        axis = torch.rand(b, generator=self.gen) * 2 * math.pi
        stretch = 0.85 + 0.3 * torch.rand(b, generator=self.gen)
        shear = (torch.rand(b, generator=self.gen) - 0.5) * 0.2
        flip = torch.where(torch.rand(b, generator=self.gen) < 0.5, -1.0, 1.0)

        def rot(a: torch.Tensor) -> torch.Tensor:
            c, s_ = torch.cos(a), torch.sin(a)
            return torch.stack([torch.stack([c, -s_], -1), torch.stack([s_, c], -1)], -2)

        scale = torch.diag_embed(torch.stack([stretch, torch.ones(b)], -1))
        sh = torch.eye(2).repeat(b, 1, 1)
        sh[:, 0, 1] = shear
        fl = torch.diag_embed(torch.stack([flip, torch.ones(b)], -1))
        m = rot(theta) @ rot(axis) @ scale @ rot(-axis) @ sh @ fl
        # affine_grid maps output [-1,1] coords to input [-1,1]; the patch is the centre p/s of the source.
        m = m * (p / s)
        affine = torch.cat([m, torch.zeros(b, 2, 1)], dim=2)
        grid = F.affine_grid(affine, (b, 1, p, p), align_corners=False)
        img = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        tgt = F.grid_sample(tgt + 2.0, grid, mode="nearest", padding_mode="zeros", align_corners=False) - 2.0
        tgt[tgt < -1.5] = UNLABELLED  # outside the source: unknown
        noise = torch.randn(b, 1, 1, 1, generator=self.gen).abs() * 0.3
        img = img + noise * torch.randn(img.shape, generator=self.gen)
        img = (img - img.mean(dim=(2, 3), keepdim=True)) / img.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)
        return img, tgt


def class_weights(micrographs: Sequence[TrainingMicrograph]) -> torch.Tensor:
    """BoxNet's weighting: background ``(n_particle / n_background) ** (1/3)``, others 1."""
    n_p = sum(int(np.count_nonzero(m.target == PARTICLE)) for m in micrographs)
    n_b = sum(int(np.count_nonzero((m.target == BACKGROUND) | (m.target == FALSE_POSITIVE))) for m in micrographs)
    w_bg = (max(n_p, 1) / max(n_b, 1)) ** (1 / 3) if n_b else 1.0
    return torch.tensor([w_bg, 1.0, 1.0], dtype=torch.float32)


def picker_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    prior: torch.Tensor,
    weights: torch.Tensor,
    pixel_weight: torch.Tensor | None = None,
    pu_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Labelled cross-entropy plus the non-negative PU risk on unlabelled pixels.

    Parameters
    ----------
    logits : torch.Tensor
        (B, 3, H, W).
    target : torch.Tensor
        (B, H, W) in {-1, 0, 1, 2}.
    prior : torch.Tensor
        (B,) expected fraction of unlabelled pixels that are particle pixels.
    weights : torch.Tensor
        (3,) class weights.
    pixel_weight : torch.Tensor, optional
        (B, H, W) extra per-pixel weights (patch borders, false positives).
    pu_weight : float
        Weight of the PU term.
    """
    labelled = target >= 0
    pw = torch.ones_like(target, dtype=logits.dtype) if pixel_weight is None else pixel_weight
    ce = F.cross_entropy(logits, target.clamp_min(0), reduction="none")
    w = weights.to(logits.device)[target.clamp_min(0)] * pw * labelled
    loss_ce = (ce * w).sum() / w.sum().clamp_min(1e-6)
    parts = {"ce": float(loss_ce.detach())}
    unl = ~labelled
    pos = target == PARTICLE
    if pu_weight <= 0 or not unl.any() or not pos.any():
        return loss_ce, parts
    log_all = torch.logsumexp(logits, dim=1)
    log_pos = logits[:, PARTICLE] - log_all  # log p(particle)
    log_neg = torch.logsumexp(logits[:, [BACKGROUND, JUNK]], dim=1) - log_all  # log(1 - p(particle))
    pi = (prior[:, None, None] * torch.ones_like(log_pos))[unl].mean()
    r_p_plus = -(log_pos[pos] * pw[pos]).sum() / pw[pos].sum()
    r_p_minus = -(log_neg[pos] * pw[pos]).sum() / pw[pos].sum()
    r_u_minus = -(log_neg[unl] * pw[unl]).sum() / pw[unl].sum()
    neg = r_u_minus - pi * r_p_minus
    # nnPU: when the negative risk goes below zero the model is overfitting; step back up it.
    loss_pu = -neg if neg.item() < 0 else pi * r_p_plus + neg
    parts["pu"] = float(loss_pu.detach())
    return loss_ce + pu_weight * loss_pu, parts


def _border_weight(size: int, border: int = 16, low: float = 0.1) -> torch.Tensor:
    """Pixels near a patch edge see less context; BoxNet weights them down."""
    w = torch.full((size, size), low)
    w[border:-border, border:-border] = 1.0
    return w


def _collect(gen: Generator[Any, None, Any], records: list[EpochRecord]) -> Generator[Any, None, Any]:
    """``yield from gen``, keeping its epoch records (resumed ones too) in ``records``; closing this closes ``gen``."""
    try:
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                return stop.value
            if isinstance(item, Resumed):
                records[:] = list(item.history)
            elif isinstance(item, EpochRecord):
                records.append(item)
            yield item
    finally:
        gen.close()


def train(
    model: PickerModel,
    micrographs: Sequence[TrainingMicrograph],
    config: TrainConfig | None = None,
    checkpoint: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
) -> Generator[Progress | Resumed | EpochRecord | Stopped, None, PickerModel]:
    """Train (or fine-tune) ``model`` in place until it stops improving; a generator (see module docstring).

    Parameters
    ----------
    model : PickerModel
        The model to train; pass a copy to keep the original.
    micrographs : sequence of TrainingMicrograph
        Prepared training data.
    config : TrainConfig, optional
        Settings.
    checkpoint : path, optional
        Written after every epoch (with the best weights so far); if it exists and was
        written by the same settings and data, training resumes from it.
    device : torch.device or str
        Where to train.

    Yields
    ------
    Progress, Resumed, EpochRecord or Stopped
        Progress per step (with the best validation and an ETA); ``Resumed`` once after a
        checkpoint was restored; a record per epoch; ``Stopped`` at the end.

    Returns
    -------
    PickerModel
        The trained model (the same object) with the best epoch's weights.  Its last
        ``history`` entry says why training stopped (``stopped``: patience, budget, max
        epochs) and which epoch was kept (``best_epoch``).  When the generator is closed
        or interrupted, the model gets the best weights so far and an entry with
        ``stopped`` = cancelled before the exception goes on.
    """
    config = config or TrainConfig()
    config.check()
    device = torch.device(device)
    if not micrographs:
        raise CryoInputError(None, "no micrographs to train on")
    if sum(m.n_labelled for m in micrographs) == 0:
        raise CryoInputError(None, "no labelled particles: pick some particles first")
    train_set, val_set = hold_out_particles(micrographs, config.val_fraction, config.seed)
    weights = class_weights(train_set)
    net = model.net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    data_key = hashlib.sha1(
        b"".join(np.ascontiguousarray(m.target[::7, ::7]).tobytes() for m in micrographs)
    ).hexdigest()[:12]
    run_key = f"{config.key()}-{data_key}"
    border = _border_weight(config.patch).to(device)
    total_steps = config.epochs * config.steps_per_epoch

    def train_epoch(epoch: int) -> Generator[Progress, None, float]:
        sampler = PatchSampler(train_set, config, seed=config.seed * 1000 + epoch)
        net.train()
        losses = []
        for step in range(config.steps_per_epoch):
            global_step = epoch * config.steps_per_epoch + step
            if config.schedule == "cosine":
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(config.lr, global_step, total_steps)
            img, tgt, prior = sampler.batch()
            img, tgt, prior = img.to(device), tgt.to(device), prior.to(device)
            logits = net(img)
            pixel_w = border.expand_as(tgt).clone()
            fp = tgt == FALSE_POSITIVE
            pixel_w[fp] *= config.false_positive_weight
            tgt[fp] = BACKGROUND
            loss, _ = picker_loss(logits, tgt, prior, weights, pixel_w, config.pu_weight)
            if not torch.isfinite(loss):
                raise CryoInputError(None, f"training diverged (loss is {loss.item()}) at epoch {epoch + 1}; the last checkpoint is kept")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            yield Progress(global_step + 1, total_steps, f"epoch {epoch + 1}, loss {np.mean(losses[-10:]):.3f}")
        return float(np.mean(losses))

    def validate(_epoch: int) -> tuple[float, float]:
        return validation_scores(model, val_set, device) if val_set else (math.nan, math.nan)

    stopping = EarlyStopping(
        patience=config.patience,
        budget_s=config.budget_s,
        lr_patience=config.lr_patience if config.schedule == "plateau" else None,
    )
    records: list[EpochRecord] = []

    def finish(reason: str | None) -> None:
        net.eval()
        model.history = list(model.history) + [
            {
                "epochs": len(records),
                "max_epochs": config.epochs,
                "stopped": reason or STOP_CANCELLED,
                "best_epoch": stopping.best_epoch,
                "best_val_loss": stopping.best_value,
                "micrographs": len(micrographs),
                "labelled_particles": int(sum(m.n_labelled for m in micrographs)),
                "validation_particles": int(sum(v.n_particles for v in val_set)),
                "losses": history_dicts(records),
                "config": asdict(config),
            }
        ]

    loop = run_training(net, [opt], config.epochs, train_epoch, validate, checkpoint, run_key, stopping)
    try:
        yield from _collect(loop, records)
    except (GeneratorExit, KeyboardInterrupt):
        finish(STOP_CANCELLED)
        raise
    finish(stopping.reason)
    return model
