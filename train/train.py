"""Train MobileNet-L on teacher-labelled faces with on-the-fly occlusion.

    python -m train.train --faces ../shared/data/faces --out runs/mobilenet_l
    python -m train.train ... --preset paper          # the paper's Adam 1e-4, betas (0, 0.9), batch 16, L2
    python -m train.train ... --resume                # carry on from OUT/last.pt
    python -m train.train ... --variant no-SE         # an ablation variant of Figure 9 (train.model.ABLATIONS)
    torchrun --nproc_per_node=N -m train.train ...    # DistributedDataParallel (NCCL on GPUs, gloo on CPU)

Writes OUT/last.pt (resumable), OUT/best.pt (lowest validation NMSE) and OUT/history.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from runtime.files import atomic_write_bytes
from runtime.metrics import nmse_per_face
from runtime.preprocess import INPUT_SIZE

from . import checkpoint
from .annotate import annotate
from .data import DEFAULT_FACES, labels_path, load_labels, read_split
from .dataset import CropCache, TrainSet, validation_batches
from .model import ABLATIONS, MobileNetL, ModelConfig, variant_name

PRESETS = {
    # The paper's settings (Section "Training" of PAPER.md).
    "paper": dict(optimizer="adam", lr=1e-4, betas=(0.0, 0.9), weight_decay=0.0, batch=16, loss="l2",
                  schedule="constant", warmup_epochs=0),
    # Our default: larger steps with warm-up and cosine decay, and an L1 loss (NMSE is a mean of distances).
    "default": dict(optimizer="adamw", lr=2e-3, betas=(0.9, 0.999), weight_decay=1e-4, batch=32, loss="l1",
                    schedule="cosine", warmup_epochs=1),
}


def landmark_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Loss in 256-pixel units. l2 is the paper's ||L_hat - L_gt||^2 over the 136 numbers, batch-averaged."""
    diff = (pred - target) * INPUT_SIZE
    if kind == "l2":
        return diff.pow(2).sum(dim=(1, 2)).mean()
    return diff.abs().mean()


def learning_rate(cfg: dict, epoch_float: float, epochs: int) -> float:
    if epoch_float < cfg["warmup_epochs"]:
        return cfg["lr"] * (epoch_float + 1e-3) / cfg["warmup_epochs"]
    if cfg["schedule"] == "cosine":
        t = (epoch_float - cfg["warmup_epochs"]) / max(1e-9, epochs - cfg["warmup_epochs"])
        return 1e-6 + 0.5 * (cfg["lr"] - 1e-6) * (1 + math.cos(math.pi * min(1.0, t)))
    return cfg["lr"]


@torch.no_grad()
def validate(model: torch.nn.Module, xs: np.ndarray, ys: np.ndarray, kinds: list[str], batch: int = 64,
             device: torch.device = torch.device("cpu")) -> dict:
    """Validation NMSE (%) per kind of occlusion and overall, in crop coordinates (NMSE is scale invariant)."""
    model.eval()
    preds = np.concatenate([model(torch.from_numpy(xs[i:i + batch]).to(device)).cpu().numpy()
                            for i in range(0, len(xs), batch)])
    per = nmse_per_face(preds, ys)
    kinds_arr = np.array(kinds)
    out = {k: float(per[kinds_arr == k].mean()) for k in dict.fromkeys(kinds)}
    out["all"] = float(per.mean())
    return out


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def training_data(faces: Path, limit: int | None, val_limit: int | None, seed: int, log: Callable,
                  rank: int = 0, world: int = 1) -> tuple[TrainSet, tuple[np.ndarray, np.ndarray, list[str]]]:
    """The augmented, occluded training set and the validation batches of a face folder's splits.

    Labels and decoded-crop caches are made once (by rank 0 under torchrun); every model trained here
    (MobileNet-L, its ablations, FAN*) reads the same caches.
    """
    train_paths = read_split(faces, "train")[:limit]
    val_paths = read_split(faces, "val")[:val_limit]
    if not train_paths or not val_paths:
        raise SystemExit(f"{faces}: needs splits.csv with train and val images")
    if rank == 0 and not labels_path(faces).exists():
        annotate(faces, None)
    if world > 1:
        dist.barrier()
    train_labels = load_labels(faces, train_paths)
    val_labels = load_labels(faces, val_paths)
    log(f"train faces: {len(train_labels.paths)} of {len(train_paths)} labelled; "
        f"val faces: {len(val_labels.paths)} of {len(val_paths)}")
    train_tag, val_tag = f"train-n{len(train_labels.paths)}", f"val-n{len(val_labels.paths)}"
    if rank == 0:  # build the caches once
        CropCache(faces, train_labels, train_tag)
        CropCache(faces, val_labels, val_tag)
    if world > 1:
        dist.barrier()
    train_set = TrainSet(CropCache(faces, train_labels, train_tag), seed)
    return train_set, validation_batches(CropCache(faces, val_labels, val_tag))


def record_epoch(out: Path, model: torch.nn.Module, format: str, opt: torch.optim.Optimizer, history: list[dict],
                 best: float, epoch: int, losses: list[float], val: dict, t0: float, log: Callable, **meta) -> float:
    """Append the epoch to ``history``; write best.pt (when it improved), last.pt and history.json; return the best."""
    record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_nmse": val, "seconds": time.time() - t0}
    history.append(record)
    improved = val["all"] < best
    best = min(best, val["all"])
    meta = dict(epoch=epoch + 1, history=history, best_val_nmse=best, **meta)
    if improved:
        checkpoint.save(out / "best.pt", model, format, **meta)
    checkpoint.save(out / "last.pt", model, format, optimizer=opt.state_dict(), **meta)
    atomic_write_bytes(out / "history.json", json.dumps(history, indent=1).encode())
    log(f"epoch {epoch + 1}: loss {record['train_loss']:.4g}, val NMSE {val['all']:.3f} "
        f"(clean {val['clean']:.3f}, centre {val['center25']:.3f}, synthetic {val['synthetic']:.3f})"
        f"{' *best*' if improved else ''}, {record['seconds']:.0f} s")
    return best


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=Path, default=DEFAULT_FACES, help="face folder with splits.csv (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=Path("runs/mobilenet_l"), help="run folder (default: %(default)s)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default", help="hyper-parameter preset (default: %(default)s)")
    ap.add_argument("--variant", choices=list(ABLATIONS), default="full",
                    help="network: MobileNet-L or one of its ablation variants (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=20, help="epochs (default: %(default)s)")
    ap.add_argument("--batch", type=int, help="per-process batch size (default: the preset's)")
    ap.add_argument("--lr", type=float, help="peak learning rate (default: the preset's)")
    ap.add_argument("--limit", type=int, help="use only the first N training faces (quick runs, tests)")
    ap.add_argument("--val-limit", type=int, help="use only the first N validation faces")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default: %(default)s)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    rank, world, device = setup_distributed()
    cfg = dict(PRESETS[args.preset])
    cfg.update({k: v for k, v in (("batch", args.batch), ("lr", args.lr)) if v is not None})
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    log = (lambda *a: print(*a, file=sys.stderr)) if rank == 0 else (lambda *a: None)

    train_set, (val_x, val_y, val_kinds) = training_data(args.faces, args.limit, args.val_limit, args.seed, log,
                                                         rank, world)

    model = MobileNetL(ABLATIONS[args.variant]).to(device)
    if cfg["optimizer"] == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], betas=cfg["betas"])
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=cfg["betas"], weight_decay=cfg["weight_decay"])
    start_epoch, history, best = 0, [], float("inf")
    last_path = args.out / "last.pt"
    if args.resume:
        if not last_path.exists():
            raise SystemExit(f"{last_path}: nothing to resume")
        state = checkpoint.load(last_path)
        saved = ModelConfig(**state["config"])
        if saved != model.config:
            raise SystemExit(f"{last_path}: a run of variant {variant_name(saved)!r}, not --variant {args.variant}; "
                             f"resume it with --variant {variant_name(saved)} or train this one in another --out")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, history, best = state["epoch"], state["history"], state["best_val_nmse"]
        log(f"resumed {last_path} at epoch {start_epoch}, best val NMSE {best:.3f}")
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    sampler = (torch.utils.data.distributed.DistributedSampler(train_set, world, rank, seed=args.seed)
               if world > 1 else None)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=cfg["batch"], shuffle=sampler is None, sampler=sampler, drop_last=True,
        num_workers=args.workers, persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(args.seed),
    )
    steps = len(loader)
    if steps == 0:
        raise SystemExit(f"only {len(train_set)} training faces: fewer than one batch of {cfg['batch']}")
    for epoch in range(start_epoch, args.epochs):
        train_set.epoch = epoch
        if sampler is not None:
            sampler.set_epoch(epoch)
        loader.generator.manual_seed(args.seed + epoch)
        net.train()
        t0, losses = time.time(), []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch", disable=rank != 0)
        for step, (x, y) in enumerate(bar):
            lr = learning_rate(cfg, epoch + step / steps, args.epochs)
            for g in opt.param_groups:
                g["lr"] = lr
            loss = landmark_loss(net(x.to(device)), y.to(device), cfg["loss"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", lr=f"{lr:.1e}")
        if rank == 0:
            val = validate(model, val_x, val_y, val_kinds, device=device)
            best = record_epoch(args.out, model, checkpoint.FORMAT, opt, history, best, epoch, losses, val, t0, log,
                                preset=args.preset, train_config=cfg, world_size=world, train_faces=len(train_set),
                                args={k: str(v) for k, v in vars(args).items()})
        if world > 1:
            dist.barrier()
    if world > 1:
        dist.destroy_process_group()
    return {"history": history, "best_val_nmse": best}


if __name__ == "__main__":
    main()
