"""Train MobileNet-L on teacher-labelled faces with on-the-fly occlusion.

    python -m train.train --faces ../shared/data/faces --out runs/mobilenet_l
    python -m train.train ... --preset paper          # the paper's Adam 1e-4, betas (0, 0.9), batch 16, L2
    python -m train.train ... --resume                # carry on from OUT/last.pt
    python -m train.train ... --model paper           # the paper's 136-output network (no heads)
    python -m train.train ... --variant no-SE         # an ablation variant of Figure 9 (train.model.ABLATIONS)
    python -m train.train ... --init weights/mobilenet_l.pt   # start from another run's weights
    torchrun --nproc_per_node=N -m train.train ...    # DistributedDataParallel (NCCL on GPUs, gloo on CPU)

The sample recipe (--photometric, --textured, --labels, --negatives; train.dataset.Recipe) and the
loss (--loss) default to what won the A/B on validation (docs/recipe.md).
Writes OUT/last.pt (resumable), OUT/best.pt (lowest validation NMSE) and OUT/history.json.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from core.data import DEFAULT_FACES, labels_path, load_labels, read_split
from core.files import write_json, check_output_path, sha256_file
from core.metrics import nmse_per_face, roc_auc
from core.preprocess import INPUT_SIZE

from . import checkpoint
from .annotate import annotate
from .dataset import LABEL_MODES, LEGACY_RECIPE, CropCache, Recipe, TrainSet, validation_batches
from .loop import fit, open_run
from .model import ABLATIONS, MODELS, MobileNetL, ModelConfig, landmarks_of, variant_name

LOSSES = ("l1", "l2", "wing")
PRESETS = {
    # The paper's settings (Section "Training" of PAPER.md).
    "paper": dict(optimizer="adam", lr=1e-4, betas=(0.0, 0.9), weight_decay=0.0, batch=16, loss="l2",
                  schedule="constant", warmup_epochs=0),
    # Our default: larger steps with warm-up and cosine decay, and the Wing loss (docs/recipe.md).
    "default": dict(optimizer="adamw", lr=2e-3, betas=(0.9, 0.999), weight_decay=1e-4, batch=32, loss="wing",
                    schedule="cosine", warmup_epochs=1),
}
# Wing loss (Feng et al. 2018) in 256-pixel units: log-shaped below WING_W px so that small and medium
# errors keep pulling, linear above it.
WING_W, WING_EPS = 10.0, 2.0


def landmark_loss(pred: torch.Tensor, target: torch.Tensor, kind: str,
                  weight: torch.Tensor | None = None) -> torch.Tensor:
    """Loss in 256-pixel units, per-point ``weight`` (N, 68) optional (default 1).

    l2 is the paper's ||L_hat - L_gt||^2 over the 136 numbers, batch-averaged; l1 and wing are means
    over the weighted coordinates.
    """
    diff = (pred - target) * INPUT_SIZE
    w = torch.ones(diff.shape[:2], device=diff.device) if weight is None else weight
    if kind == "l2":
        return (diff.pow(2).sum(-1) * w).sum() / diff.shape[0]
    err = diff.abs()
    if kind == "wing":
        c = WING_W - WING_W * math.log(1 + WING_W / WING_EPS)
        err = torch.where(err < WING_W, WING_W * torch.log1p(err / WING_EPS), err - c)
    elif kind != "l1":
        raise ValueError(f"unknown loss {kind!r}: use one of {', '.join(LOSSES)}")
    return (err * w[..., None]).sum() / (2 * w.sum()).clamp(min=1.0)


def training_loss(output, batch: dict, kind: str, head_weight: float = 1.0) -> torch.Tensor:
    """Landmark loss on the faces, plus the heads' cross-entropies (each times ``head_weight``) when the
    model has heads.

    Visibility is learnt on faces only (negatives have no landmarks); the face score on every sample.
    """
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    face = batch["face"]
    weight = batch["weight"] * face[:, None]
    if not isinstance(output, tuple):
        return landmark_loss(output, batch["landmarks"], kind, weight)
    landmarks, vis_logits, face_logits = output
    loss = landmark_loss(landmarks, batch["landmarks"], kind, weight)
    vis = bce(vis_logits, batch["visibility"], reduction="none").mean(1)
    loss = loss + head_weight * (vis * face).sum() / face.sum().clamp(min=1.0)
    return loss + head_weight * bce(face_logits, face)


@torch.no_grad()
def validate(model: torch.nn.Module, val: dict, batch: int = 64, device: torch.device = torch.device("cpu")) -> dict:
    """Validation NMSE (%) per kind of sample and over all faces, in crop coordinates (NMSE is scale invariant).

    For models with heads also visibility AUC (occluded kinds) and face-score AUC (faces vs negatives).
    """
    model.eval()
    outs = [model(torch.from_numpy(val["x"][i:i + batch]).to(device)) for i in range(0, len(val["x"]), batch)]
    kinds = val["kind"]
    faces = kinds != "negative"
    preds = np.concatenate([landmarks_of(o).cpu().numpy() for o in outs])
    per = nmse_per_face(preds[faces], val["landmarks"][faces])
    out = {str(k): float(per[kinds[faces] == k].mean()) for k in dict.fromkeys(kinds[faces])}
    out["all"] = float(per.mean())
    if isinstance(outs[0], tuple):
        vis = np.concatenate([o[1].cpu().numpy() for o in outs])
        score = np.concatenate([o[2].cpu().numpy() for o in outs])
        occluded = faces & np.isin(kinds, ["center25", "synthetic", "textured"])
        out["visibility_auc"] = roc_auc(vis[occluded], val["visibility"][occluded])
        out["face_score_auc"] = roc_auc(score, val["face"])
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
                  rank: int = 0, world: int = 1, recipe: Recipe = Recipe(),
                  negatives: bool = True, spread: int | None = None) -> tuple[TrainSet, dict]:
    """The augmented, occluded training set and the validation batches of a face folder's splits.

    Labels and decoded-crop caches are made once (by rank 0 under torchrun); every model trained here
    (MobileNet-L, its ablations, FAN*) reads the same caches.
    """
    train_paths = read_split(faces, "train")[:limit]
    if spread:  # every k-th face, so a reduced budget sees every source folder of the split
        train_paths = [train_paths[i] for i in np.linspace(0, len(train_paths) - 1, spread).astype(int)]
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
    train_set = TrainSet(CropCache(faces, train_labels, train_tag), seed, recipe, negatives)
    return train_set, validation_batches(CropCache(faces, val_labels, val_tag))


# What a run started with --init keeps of that checkpoint, under "init" (with its path and sha256).
INIT_RECORD_KEYS = ("epoch", "history", "best_val_nmse", "heads_only", "preset", "train_config", "recipe", "train_faces", "init")


def landmark_selection(val: dict) -> float:
    """What best.pt minimises: the validation NMSE over all kinds of samples."""
    return val["all"]


def heads_selection(val: dict) -> float:
    """What best.pt minimises when only the heads train (the landmarks cannot change): 1 - visibility AUC."""
    return 1.0 - val["visibility_auc"]


def best_val_nmse(history: list[dict], select: Callable[[dict], float]) -> float:
    """The validation landmark NMSE of the epoch ``select`` ranks best (inf before the first epoch)."""
    return min(history, key=lambda h: select(h["val_nmse"]))["val_nmse"]["all"] if history else float("inf")


def record_epoch(out: Path, model: torch.nn.Module, format: str, opt: torch.optim.Optimizer, history: list[dict],
                 best: float, epoch: int, losses: list[float], val: dict, t0: float, log: Callable,
                 select: Callable[[dict], float] = landmark_selection, **meta) -> float:
    """Append the epoch to ``history``; write best.pt (when ``select(val)`` improved), last.pt and history.json;
    return the best ``select(val)`` so far."""
    record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_nmse": val, "seconds": time.time() - t0}
    history.append(record)
    improved = select(val) < best
    best = min(best, select(val))
    # best_val_nmse is always the landmark NMSE of the best epoch; best_selection what best.pt minimises
    meta = dict(epoch=epoch + 1, history=history, best_val_nmse=best_val_nmse(history, select), best_selection=best,
                **meta)
    if improved:
        checkpoint.save(out / "best.pt", model, format, **meta)
    checkpoint.save(out / "last.pt", model, format, optimizer=opt.state_dict(), **meta)
    write_json(out / "history.json", history)
    kinds = ", ".join(f"{k} {v:.3f}" for k, v in val.items() if k != "all")
    log(f"epoch {epoch + 1}: loss {record['train_loss']:.4g}, val NMSE {val['all']:.3f} ({kinds})"
        f"{' *best*' if improved else ''}, {record['seconds']:.0f} s")
    return best


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=Path, default=DEFAULT_FACES, help="face folder with splits.csv (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=Path("runs/mobilenet_l"), help="run folder (default: %(default)s)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default", help="hyper-parameter preset (default: %(default)s)")
    ap.add_argument("--model", choices=list(MODELS), default="mobilenet_l",
                    help="network: with visibility and face-score heads, or the paper's (default: %(default)s)")
    ap.add_argument("--variant", choices=list(ABLATIONS),
                    help="an ablation variant of the paper's network (Figure 9); overrides --model")
    ap.add_argument("--vis-tap", type=int, default=ModelConfig.vis_tap, metavar="K",
                    help="models with heads: the visibility head sees the output map of backbone block K (2: 32x32, "
                         "7: 16x16) instead of the 8x8 S1 map (-1) (default: %(default)s)")
    ap.add_argument("--vis-channels", type=int, default=ModelConfig.vis_channels, metavar="C",
                    help="models with heads: channels that map is reduced to (default: %(default)s)")
    ap.add_argument("--vis-points", type=int, nargs="*", metavar="K",
                    help="models with heads: the visibility head also reads these blocks' maps at each predicted "
                         "point (0: 64x64, 2: 32x32, 7: 16x16); none: pooled features only (default: the model's)")
    ap.add_argument("--init", type=Path, help="start from this checkpoint's weights (those that fit)")
    ap.add_argument("--heads-only", action="store_true",
                    help="train only the visibility and face-score heads on a frozen landmark network (from "
                         "--init): its landmarks stay exactly as they were; best.pt is chosen by visibility AUC")
    ap.add_argument("--loss", choices=LOSSES, help="landmark loss (default: the preset's)")
    defaults = Recipe()
    ap.add_argument("--photometric", type=float, default=defaults.photometric,
                    help="share of samples photometrically degraded (default: %(default)s)")
    ap.add_argument("--textured", type=float, default=defaults.textured,
                    help="share of occluded samples with textured instead of black holes (default: %(default)s)")
    ap.add_argument("--fragments", type=float, default=defaults.fragments,
                    help="share of training masks made of fragmented holes, like the Liu et al. masks, instead of "
                         "strokes, blobs and rectangles (default: %(default)s)")
    ap.add_argument("--heavy", type=float, default=defaults.heavy,
                    help="share of training masks drawn heavy instead: the centre square (3 in 10) or free-form "
                         "holes over 40-70 %% of the crop (default: %(default)s)")
    ap.add_argument("--labels", choices=LABEL_MODES, default=defaults.labels,
                    help="doubtful teacher labels: keep (raw), average with the mirrored prediction, down-weight "
                         "or drop (default: %(default)s)")
    ap.add_argument("--negatives", type=float, default=defaults.negatives,
                    help="face-score negatives per face, models with heads only (default: %(default)s)")
    ap.add_argument("--negatives-mode", choices=["extra", "in-batch"], default="extra",
                    help="extra: negatives come on top of the faces; in-batch: a negative replaces its face by "
                         "chance (the A/B's control) (default: %(default)s)")
    ap.add_argument("--head-weight", type=float, default=defaults.head_weight,
                    help="weight of each head's loss beside the landmark loss (default: %(default)s)")
    ap.add_argument("--head-noise", type=float, default=defaults.head_noise,
                    help="Gaussian noise on the heads' inputs while training, as a fraction of each feature's "
                         "spread, so they survive an INT8 engine's feature error (default: %(default)s)")
    ap.add_argument("--patience", type=int,
                    help="stop when validation NMSE has not improved for this many epochs")
    ap.add_argument("--epochs", type=int, default=20, help="epochs (default: %(default)s)")
    ap.add_argument("--batch", type=int, help="per-process batch size (default: the preset's)")
    ap.add_argument("--lr", type=float, help="peak learning rate (default: the preset's)")
    ap.add_argument("--limit", type=int, help="use only the first N training faces (quick runs, tests)")
    ap.add_argument("--spread", type=int, metavar="N",
                    help="use N training faces spread evenly over the split (reduced-budget A/B runs)")
    ap.add_argument("--val-limit", type=int, help="use only the first N validation faces")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    ap.add_argument("--force", action="store_true", help="start a fresh run in an OUT that holds one (overwrites it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default: %(default)s)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args(argv)
    try:  # the config checks the block indices; here, before any data is loaded
        ModelConfig(vis_tap=args.vis_tap, vis_points=args.vis_points or ())
    except ValueError as e:
        ap.error(str(e))
    try:  # now, not when the first epoch's checkpoint is written
        check_output_path(args.out, folder=True)
    except ValueError as e:
        ap.error(str(e))
    return args


def cli() -> None:
    """Console-script entry point (pyproject.toml)."""
    main()  # returns its results for callers in Python; the exit status is 0 unless it raises


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    rank, world, device = setup_distributed()
    cfg = dict(PRESETS[args.preset])
    cfg.update({k: v for k, v in (("batch", args.batch), ("lr", args.lr), ("loss", args.loss)) if v is not None})
    recipe = Recipe(photometric=args.photometric, textured=args.textured, labels=args.labels,
                    negatives=args.negatives, negatives_extra=args.negatives_mode == "extra",
                    head_weight=args.head_weight, head_noise=args.head_noise, fragments=args.fragments,
                    heavy=args.heavy)
    config = ABLATIONS[args.variant] if args.variant else MODELS[args.model]
    if config.heads:
        config = replace(config, vis_tap=args.vis_tap, vis_channels=args.vis_channels)
        if args.vis_points is not None:
            config = replace(config, vis_points=tuple(args.vis_points))
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    log = (lambda *a: print(*a, file=sys.stderr)) if rank == 0 else (lambda *a: None)

    last_path = args.out / "last.pt"
    state = open_run(args.out, args.resume, args.force, args.epochs, checkpoint.load, log)
    if state is not None:
        saved = ModelConfig(**state["config"])
        if saved != config:
            differ = ", ".join(f"{k} {getattr(saved, k)!r} (asked: {getattr(config, k)!r})"
                               for k in saved.to_dict() if getattr(saved, k) != getattr(config, k))
            raise SystemExit(f"{last_path}: a run of {variant_name(saved)!r}, not {variant_name(config)!r} ({differ}); "
                             f"resume it with the same --model/--variant/--vis-points or train this one in another --out")
        # the run goes on as it started, whatever the flags say now
        # keys the run's recipe predates take the values it ran with
        cfg = state["train_config"]
        recipe = Recipe(**{"negatives_extra": False, "head_noise": 0.0, **state.get("recipe", LEGACY_RECIPE.to_dict())})
    train_set, val = training_data(args.faces, args.limit, args.val_limit, args.seed, log, rank, world, recipe,
                                   negatives=config.heads, spread=args.spread)

    model = MobileNetL(config).to(device)
    model.head_noise = recipe.head_noise
    init_record = None if state is None else state.get("init")  # what the run started from, kept when resumed
    if args.init and state is None:
        init = checkpoint.load(args.init)
        own = model.state_dict()
        fits = {k: v for k, v in init["model"].items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(fits, strict=False)
        log(f"initialised {len(fits)} of {len(own)} tensors from {args.init}")
        # its own training record travels on: a heads-only model's landmark network was trained there
        init_record = {"path": str(args.init), "sha256": sha256_file(args.init),
                       **{k: init[k] for k in INIT_RECORD_KEYS if k in init}}
    heads_only = args.heads_only if state is None else state.get("heads_only", False)
    if heads_only:
        if not config.heads:
            raise SystemExit(f"--heads-only needs a model with heads (--model mobilenet_l), not {args.model!r}")
        model.freeze_landmarks()
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg["optimizer"] == "adam":
        opt = torch.optim.Adam(params, lr=cfg["lr"], betas=cfg["betas"])
    else:
        opt = torch.optim.AdamW(params, lr=cfg["lr"], betas=cfg["betas"], weight_decay=cfg["weight_decay"])
    start_epoch, history, best = 0, [], float("inf")
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        # runs from before best_selection existed stored the selection value as best_val_nmse
        start_epoch, history, best = state["epoch"], state["history"], state.get("best_selection", state["best_val_nmse"])
        log(f"resumed {last_path} at epoch {start_epoch}, best val NMSE {best:.3f}")
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    sampler = (torch.utils.data.distributed.DistributedSampler(train_set, world, rank, seed=args.seed)
               if world > 1 else None)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=cfg["batch"], shuffle=sampler is None, sampler=sampler, drop_last=True,
        num_workers=args.workers, persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(args.seed),
    )
    if len(loader) == 0:
        raise SystemExit(f"only {len(train_set)} training faces: fewer than one batch of {cfg['batch']}")

    def step_loss(batch: dict) -> torch.Tensor:
        batch = {k: v.to(device) for k, v in batch.items()}
        out = net(batch["x"], logits=True) if config.heads else net(batch["x"])
        return training_loss(out, batch, cfg["loss"], recipe.head_weight)

    select = heads_selection if heads_only else landmark_selection
    history, best = fit(
        net, opt, loader, train_set, schedule=cfg, epochs=args.epochs, start_epoch=start_epoch, seed=args.seed,
        step_loss=step_loss, validate_epoch=lambda: validate(model, val, device=device),
        record=lambda epoch, losses, scores, t0, best: record_epoch(
            args.out, model, checkpoint.FORMAT, opt, history, best, epoch, losses, scores, t0, log,
            select=select, heads_only=heads_only,
            preset=args.preset, train_config=cfg, recipe=recipe.to_dict(), world_size=world, init=init_record,
            train_faces=train_set.faces, args={k: str(v) for k, v in vars(args).items()}),
        history=history, best=best, log=log, patience=args.patience, rank=rank, world=world, sampler=sampler)
    if rank == 0 and (args.out / "best.pt").is_file():
        # best.pt was written at its own epoch; the whole run's history says how long it trained and what came after
        checkpoint.update(args.out / "best.pt", history=history)
    if world > 1:
        dist.destroy_process_group()
    return {"history": history, "best_val_nmse": best_val_nmse(history, select), "best_selection": best}


if __name__ == "__main__":
    main()
