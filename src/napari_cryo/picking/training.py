"""Training the picker: patches, augmentation, positive-unlabelled loss, checkpoints.

Training runs on the shared loop (:mod:`napari_cryo.training_loop`): a
generator yielding :class:`~napari_cryo.tasks.Progress` and, after each
epoch, an :class:`~napari_cryo.training_loop.EpochRecord`; it returns the
trained :class:`~.model.PickerModel`.  Closing the generator (the
widget's Cancel) stops it between two steps; the last checkpoint stays.

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

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoints import cosine_lr
from ..errors import CryoInputError
from ..tasks import Progress
from ..training_loop import EpochRecord, Resumed, history_dicts, run_training
from .labels import FALSE_POSITIVE, UNLABELLED, TrainingMicrograph
from .model import BACKGROUND, JUNK, PARTICLE, PickerModel


@dataclass
class TrainConfig:
    """Training settings.

    Attributes
    ----------
    epochs : int
        Passes of ``steps_per_epoch`` batches.
    steps_per_epoch : int
        Batches per epoch.
    batch_size : int
        Patches per batch.
    patch : int
        Patch size in working pixels (larger than the ~107 px receptive field).
    lr : float
        Adam learning rate (lower when fine-tuning).
    val_fraction : float
        Fraction of micrographs held out for validation (at least one when
        there are two or more micrographs).
    false_positive_weight : float
        Weight of pixels at user-marked false positives.
    pu_weight : float
        Weight of the positive-unlabelled term.
    augment : bool
        Random rotation, flips, anisotropic scale, shear and noise.
    cosine : bool
        Decay the learning rate along a cosine to 5 % of ``lr`` by the end.
    seed : int
        Random seed of patch sampling and augmentation.
    """

    epochs: int = 4
    steps_per_epoch: int = 50
    batch_size: int = 8
    patch: int = 128
    lr: float = 1e-3
    val_fraction: float = 0.2
    false_positive_weight: float = 4.0
    pu_weight: float = 1.0
    augment: bool = True
    cosine: bool = True
    seed: int = 0

    def key(self) -> str:
        """A short hash identifying the settings (a checkpoint resumes only the same run)."""
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def split_validation(micrographs: Sequence[TrainingMicrograph], fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices of training and validation micrographs (no validation with fewer than two)."""
    n = len(micrographs)
    if n < 2 or fraction <= 0:
        return list(range(n)), []
    n_val = max(1, int(round(n * fraction)))
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


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


@torch.no_grad()
def validation_loss(model: PickerModel, micrographs: Sequence[TrainingMicrograph], weights: torch.Tensor, device: torch.device) -> float:
    """Mean labelled cross-entropy over whole validation micrographs."""
    model.net.eval()
    total, norm = 0.0, 0.0
    for m in micrographs:
        x = torch.from_numpy(m.image)[None, None].to(device)
        t = torch.from_numpy(m.target.astype(np.int64))[None].to(device)
        t[t == FALSE_POSITIVE] = BACKGROUND
        logits = model.net(x)
        labelled = t >= 0
        if not labelled.any():
            continue
        ce = F.cross_entropy(logits, t.clamp_min(0), reduction="none")
        w = weights.to(device)[t.clamp_min(0)] * labelled
        total += float((ce * w).sum())
        norm += float(w.sum())
    return total / norm if norm else float("nan")


def train(
    model: PickerModel,
    micrographs: Sequence[TrainingMicrograph],
    config: TrainConfig | None = None,
    checkpoint: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
) -> Generator[Progress | Resumed | EpochRecord, None, PickerModel]:
    """Train (or fine-tune) ``model`` in place; a generator (see module docstring).

    Parameters
    ----------
    model : PickerModel
        The model to train; pass a copy to keep the original.
    micrographs : sequence of TrainingMicrograph
        Prepared training data.
    config : TrainConfig, optional
        Settings.
    checkpoint : path, optional
        Written after every epoch; if it exists and was written by the same
        settings and data, training resumes from it.
    device : torch.device or str
        Where to train.

    Yields
    ------
    Progress, Resumed or EpochRecord
        Progress per step; ``Resumed`` once after a checkpoint was restored; a record per epoch.

    Returns
    -------
    PickerModel
        The trained model (the same object).
    """
    config = config or TrainConfig()
    device = torch.device(device)
    if not micrographs:
        raise CryoInputError(None, "no micrographs to train on")
    if sum(m.n_labelled for m in micrographs) == 0:
        raise CryoInputError(None, "no labelled particles: pick some particles first")
    tr_idx, val_idx = split_validation(micrographs, config.val_fraction, config.seed)
    train_set = [micrographs[i] for i in tr_idx]
    val_set = [micrographs[i] for i in val_idx]
    if not any(m.n_labelled for m in train_set):
        train_set, val_set = list(micrographs), []
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
            if config.cosine:
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
            yield Progress(global_step + 1, total_steps, f"epoch {epoch + 1}/{config.epochs}, loss {np.mean(losses[-10:]):.3f}")
        return float(np.mean(losses))

    def validate(_epoch: int) -> float:
        return validation_loss(model, val_set, weights, device) if val_set else math.nan

    history = yield from run_training(net, [opt], config.epochs, train_epoch, validate, checkpoint, run_key)
    net.eval()
    model.history = list(model.history) + [
        {
            "epochs": config.epochs,
            "micrographs": len(micrographs),
            "labelled_particles": int(sum(m.n_labelled for m in micrographs)),
            "losses": history_dicts(history),
            "config": asdict(config),
        }
    ]
    return model
