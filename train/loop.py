"""The training loop every network here shares (MobileNet-L and its variants, FAN*): epochs of steps with a
per-step learning-rate schedule, validation and checkpoints after each epoch, early stopping, and the
seeding that makes a resumed run continue exactly where it stopped. Works under DistributedDataParallel.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from core.files import remove_temp_leftovers
from core.progress import Progress


def learning_rate(cfg: dict, epoch_float: float, epochs: int) -> float:
    if epoch_float < cfg["warmup_epochs"]:
        return cfg["lr"] * (epoch_float + 1e-3) / cfg["warmup_epochs"]
    if cfg["schedule"] == "cosine":
        t = (epoch_float - cfg["warmup_epochs"]) / max(1e-9, epochs - cfg["warmup_epochs"])
        return 1e-6 + 0.5 * (cfg["lr"] - 1e-6) * (1 + math.cos(math.pi * min(1.0, t)))
    return cfg["lr"]


RUN_FILES = ("last.pt", "best.pt", "history.json")


def open_run(out: Path, resume: bool, force: bool, epochs: int, load: Callable[[Path], dict],
             log: Callable[[str], None] = lambda message: print(message, file=sys.stderr)) -> dict | None:
    """The checkpoint to resume (``load(last.pt)``), or None for a fresh run; refuses what would lose work.

    A fresh run into a folder that holds one needs ``force`` (hours of training are not overwritten by a
    forgotten --resume); a resume needs last.pt and epochs left to train. Once the run may start, the temp
    files of a checkpoint or history write that was killed are removed (and ``log``-ged).
    """
    last = Path(out) / "last.pt"
    state = None
    if not resume:
        found = [f for f in RUN_FILES if (Path(out) / f).exists()]
        if found and not force:
            raise SystemExit(f"{out}: holds a run already ({', '.join(found)}): --resume carries it on, --force "
                             f"starts over and overwrites it, or choose another --out")
    else:
        if not last.exists():
            raise SystemExit(f"{last}: nothing to resume")
        state = load(last)
        if state["epoch"] >= epochs:
            raise SystemExit(f"{last}: the run is at epoch {state['epoch']} of --epochs {epochs}: nothing left to "
                             f"do (raise --epochs to train it longer)")
    removed = remove_temp_leftovers(out, RUN_FILES)
    if removed:
        log(f"{out}: removed {len(removed)} temp file(s) a killed write left: {', '.join(p.name for p in removed)}")
    return state


def stalled(history: list[dict], patience: int) -> bool:
    """True when the best validation NMSE is more than ``patience`` epochs old."""
    scores = [h["val_nmse"]["all"] for h in history]
    return len(scores) > patience and min(scores[-patience:]) >= min(scores[:-patience])


def fit(net: torch.nn.Module, opt: torch.optim.Optimizer, loader: torch.utils.data.DataLoader, train_set, *,
        schedule: dict, epochs: int, start_epoch: int, seed: int, step_loss: Callable[[dict], torch.Tensor],
        validate_epoch: Callable[[], dict], record: Callable[..., float], history: list[dict], best: float,
        log: Callable, patience: int | None = None, rank: int = 0, world: int = 1, sampler=None
        ) -> tuple[list[dict], float]:
    """Train from ``start_epoch`` to ``epochs``; returns (history, best validation NMSE).

    ``step_loss(batch)`` is one batch's loss; after each epoch rank 0 calls ``validate_epoch()`` and
    ``record(epoch, losses, scores, t0, best) -> best`` (checkpoints, history). ``train_set.epoch`` and the
    loader's generator are reseeded per epoch, so the sample stream depends on (seed, epoch) only.
    """
    steps = len(loader)
    for epoch in range(start_epoch, epochs):
        train_set.epoch = epoch
        if sampler is not None:
            sampler.set_epoch(epoch)
        loader.generator.manual_seed(seed + epoch)
        net.train()
        t0, losses = time.time(), []
        bar = Progress(loader, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", disable=rank != 0)
        for step, batch in enumerate(bar):
            lr = learning_rate(schedule, epoch + step / steps, epochs)
            for g in opt.param_groups:
                g["lr"] = lr
            loss = step_loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4g}", lr=f"{lr:.1e}")
        if rank == 0:
            best = record(epoch, losses, validate_epoch(), t0, best)
        if world > 1:
            dist.barrier()
        stop = [bool(patience) and rank == 0 and stalled(history, patience)]
        if world > 1:
            dist.broadcast_object_list(stop, 0)
        if stop[0]:
            log(f"validation NMSE has not improved for {patience} epochs: stopping after epoch {epoch + 1}")
            break
    return history, best
