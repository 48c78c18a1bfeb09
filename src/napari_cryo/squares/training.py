"""Training XCryoNet: three alternating steps, semi-supervised, with checkpoints.

Each minibatch takes three steps in turn.

1. **Primary.** The primary branch and the attribute branches' classifiers
   learn the labelled scores (L1). The primary decoder reconstructs every
   crop (MSE).
2. **Attribute autoencoders.** The cracking and contamination branches'
   features and decoders reconstruct their attention-weighted crops. The rest
   of the network is frozen.
3. **Fusion.** The fusion head learns the labelled scores from the pooled
   features of the three branches. The rest is frozen.

Brightness and squareness are measured on every square (see
:mod:`.attributes`), so they are labels everywhere; cracking, contamination
and overall come from the user.  In the semi-supervised setting the
unlabelled squares of the loaded atlases join every batch through the
reconstruction losses and the measured attributes; ``fully supervised``
uses the labelled squares alone.  Training runs on the shared loop
(:mod:`napari_cryo.training_loop`): progress per batch, a record per epoch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Generator
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoints import cosine_lr
from ..errors import CryoInputError
from ..tasks import Progress
from ..training_loop import EpochRecord, Resumed, history_dicts, run_training
from .model import CONTAMINATION, CRACKING, SCORES, SquareModel

OVERALL = len(SCORES) - 1


@dataclass
class SquareTrainConfig:
    """Settings for square-model training."""

    epochs: int = 40
    batch_size: int = 32
    lr: float = 2e-3
    reconstruction_weight: float = 1.0
    semi_supervised: bool = True
    val_fraction: float = 0.0
    min_steps: int = 30
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 90° rotations and flips: square scores do not depend on orientation."""
    k = int(torch.randint(0, 4, (1,), generator=gen))
    x = torch.rot90(x, k, dims=(2, 3))
    if torch.rand(1, generator=gen) < 0.5:
        x = torch.flip(x, dims=(3,))
    return x


def supervised_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean L1 over the labels that exist (NaN targets are unlabelled)."""
    mask = torch.isfinite(target)
    if not mask.any():
        return pred.sum() * 0.0
    return F.smooth_l1_loss(pred[mask], target[mask], beta=0.5)


def _params(*modules) -> list[torch.nn.Parameter]:
    return [p for m in modules for p in m.parameters()]


def train_squares(
    model: SquareModel,
    crops: np.ndarray,
    labels: np.ndarray,
    config: SquareTrainConfig | None = None,
    checkpoint: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
) -> Generator[Progress | Resumed | EpochRecord, None, SquareModel]:
    """Train ``model`` in place on square crops.

    Parameters
    ----------
    model : SquareModel
        The model (a new one, or one to fine-tune).
    crops : numpy.ndarray
        (N, S, S) normalised crops of every square of the loaded atlases.
    labels : numpy.ndarray
        (N, 5) scores in :data:`~.model.SCORES` order, NaN where unknown.
        Rows with no cracking, contamination or overall label are
        unlabelled.
    config : SquareTrainConfig, optional
        Settings.
    checkpoint : path, optional
        Written every epoch; a run with the same settings and data resumes.
    device : torch.device or str
        Where to train.
    """
    config = config or SquareTrainConfig()
    device = torch.device(device)
    crops = np.asarray(crops, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.float32)
    if crops.ndim != 3 or labels.shape != (len(crops), len(SCORES)):
        raise ValueError(f"crops (N,S,S) and labels (N,{len(SCORES)}) expected, got {crops.shape} and {labels.shape}")
    manual = np.isfinite(labels[:, [CRACKING, CONTAMINATION, OVERALL]]).any(axis=1)
    if not manual.any():
        raise CryoInputError(None, "no labelled squares: score some squares (cracking, contamination or overall) first")
    rng = np.random.default_rng(config.seed)
    labelled_idx = np.flatnonzero(manual)
    val_idx = np.array([], dtype=int)
    if config.val_fraction > 0 and len(labelled_idx) >= 10:
        val_idx = rng.choice(labelled_idx, int(round(len(labelled_idx) * config.val_fraction)), replace=False)
    train_mask = np.ones(len(crops), bool) if config.semi_supervised else manual.copy()
    train_mask[val_idx] = False
    train_idx = np.flatnonzero(train_mask)

    net = model.net.to(device)
    primary_opt = torch.optim.Adam(
        _params(net.primary) + ([] if net.variant == "primary" else _params(net.cracking.features, net.cracking.fc, net.contamination.features, net.contamination.fc)),
        lr=config.lr,
    )
    ae_opt = fusion_opt = None
    if net.variant == "xcryonet":
        ae_opt = torch.optim.Adam(_params(net.cracking.features, net.cracking.decoder, net.contamination.features, net.contamination.decoder), lr=config.lr)
        fusion_opt = torch.optim.Adam(_params(net.fusion), lr=config.lr)
    opts = [o for o in (primary_opt, ae_opt, fusion_opt) if o is not None]

    x_all = torch.from_numpy(crops)[:, None]
    y_all = torch.from_numpy(labels)
    data_key = hashlib.sha1(crops[:, ::8, ::8].tobytes() + np.nan_to_num(labels, nan=-1).tobytes()).hexdigest()[:12]
    run_key = f"{config.key()}-{data_key}-{net.variant}"
    gen = torch.Generator().manual_seed(config.seed)
    # An epoch is at least `min_steps` batches, so that a few labelled squares still get enough updates.
    n_batches = max(config.min_steps, math.ceil(len(train_idx) / config.batch_size))
    total = config.epochs * n_batches

    def train_epoch(epoch: int) -> Generator[Progress, None, float]:
        net.train()
        epoch_rng = np.random.default_rng(config.seed + epoch)
        order = epoch_rng.permutation(train_idx)
        lab = order[manual[order]]
        unl = order[~manual[order]]
        # Half of every batch is labelled squares (drawn with replacement: they are few), half unlabelled.
        n_lab = config.batch_size // 2 if len(unl) else config.batch_size
        losses = []
        for b in range(n_batches):
            unl_part = unl[(b * (config.batch_size - n_lab)) % max(1, len(unl)) :][: config.batch_size - n_lab] if len(unl) else unl
            idx = np.concatenate([epoch_rng.choice(lab, n_lab, replace=True), unl_part])
            if len(idx) == 0:
                continue
            x = _augment(x_all[idx].to(device), gen)
            y = y_all[idx].to(device)
            lr = cosine_lr(config.lr, epoch * n_batches + b, total)
            for o in opts:
                for g in o.param_groups:
                    g["lr"] = lr
            # Step 1: primary branch (and attribute classifiers) + primary decoder.
            out = net(x)
            loss1 = supervised_loss(out["primary_attributes"], y[:, :4]) + supervised_loss(out["primary_overall"], y[:, OVERALL])
            loss1 = loss1 + config.reconstruction_weight * F.mse_loss(out["primary_reconstruction"], x)
            if net.variant == "xcryonet":
                loss1 = loss1 + supervised_loss(out["cracking"], y[:, CRACKING]) + supervised_loss(out["contamination"], y[:, CONTAMINATION])
            primary_opt.zero_grad(set_to_none=True)
            loss1.backward()
            primary_opt.step()
            record = float(loss1.detach())
            if net.variant == "xcryonet":
                # Step 2: attribute autoencoders on the attention-weighted crops, the rest frozen.
                with torch.no_grad():
                    f = net.primary.features(x)
                    att_c, att_m = net.attention(f, x.shape[-1])
                xc, xm = x * att_c, x * att_m
                loss2 = F.mse_loss(net.cracking.decoder(net.cracking.features(xc)), xc) + F.mse_loss(
                    net.contamination.decoder(net.contamination.features(xm)), xm
                )
                ae_opt.zero_grad(set_to_none=True)
                loss2.backward()
                ae_opt.step()
                # Step 3: fusion head on the branches' pooled features from step 1, the rest frozen.
                pooled = torch.cat([out["primary_pooled"], out["cracking_pooled"], out["contamination_pooled"]], dim=1).detach()
                scores = 4.0 * torch.sigmoid(net.fusion(pooled))
                loss3 = supervised_loss(scores, y)
                fusion_opt.zero_grad(set_to_none=True)
                loss3.backward()
                fusion_opt.step()
                record += float(loss2.detach()) + float(loss3.detach())
            if not math.isfinite(record):
                raise CryoInputError(None, f"training diverged at epoch {epoch + 1}; the last checkpoint is kept")
            losses.append(record)
            yield Progress(epoch * n_batches + b + 1, total, f"epoch {epoch + 1}/{config.epochs}")
        return float(np.mean(losses))

    def validate(_epoch: int) -> float:
        return evaluate_mae(model, crops[val_idx], labels[val_idx], device)["overall"] if len(val_idx) else math.nan

    history = yield from run_training(net, opts, config.epochs, train_epoch, validate, checkpoint, run_key)
    net.eval()
    model.history = list(model.history) + [{"losses": history_dicts(history), "config": asdict(config), "squares": int(len(crops)), "labelled": int(manual.sum())}]
    return model


@torch.no_grad()
def predict(model: SquareModel, crops: np.ndarray, device: torch.device | str = "cpu", batch: int = 128) -> dict[str, np.ndarray]:
    """Scores (N,5) and, for XCryoNet, attention maps (N,S,S) for cracking and contamination."""
    net = model.net.to(device).eval()
    scores, att_c, att_m = [], [], []
    x_all = torch.from_numpy(np.asarray(crops, dtype=np.float32))[:, None]
    for i in range(0, len(x_all), batch):
        out = net(x_all[i : i + batch].to(device))
        scores.append(out["scores"].cpu().numpy())
        if "attention_cracking" in out:
            att_c.append(out["attention_cracking"][:, 0].cpu().numpy())
            att_m.append(out["attention_contamination"][:, 0].cpu().numpy())
    result = {"scores": np.concatenate(scores) if scores else np.zeros((0, len(SCORES)))}
    if att_c:
        result["attention_cracking"] = np.concatenate(att_c)
        result["attention_contamination"] = np.concatenate(att_m)
    return result


def evaluate_mae(model: SquareModel, crops: np.ndarray, labels: np.ndarray, device: torch.device | str = "cpu") -> dict[str, float]:
    """Mean absolute error per score over the squares that have that label."""
    if len(crops) == 0:
        return {k: float("nan") for k in SCORES}
    pred = predict(model, crops, device)["scores"]
    out = {}
    for j, name in enumerate(SCORES):
        m = np.isfinite(labels[:, j])
        out[name] = float(np.abs(pred[m, j] - labels[m, j]).mean()) if m.any() else float("nan")
    return out
