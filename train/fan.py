"""FAN*: a stacked-hourglass heatmap baseline after Bulat & Tzimiropoulos (ICCV 2017), sized for a 2-core CPU.

    python -m train.fan --faces ../shared/data/faces --out runs/fan [--epochs E] [--resume]
    python -m train.fan --size                       # parameters and multiply-adds only

FAN stacks four hourglasses of width 256 built from its hierarchical, parallel and multi-scale
residual block (about 24 M parameters, several G multiply-adds). FAN* keeps the design (7x7
stride-2 stem, the hierarchical block, depth-4 hourglasses, intermediate supervision with the
heatmaps fed back into the next stack, 68 heatmaps at 64x64) and shrinks it to 2 stacks of width
64 (0.80 M parameters, 1.09 G multiply-adds), so that it trains on a 2-core CPU at a few times
MobileNet-L's cost (timings: docs/measurements.md). 64x64 heatmaps are FAN's resolution; sub-pixel
decoding keeps the 4 px cells from quantising the error.

Training shares MobileNet-L's data path (train.dataset.TrainSet: the same cache, jitter and
on-the-fly occlusion) and validation (train.train.validate); the normalised targets become Gaussian
heatmaps inside the training step, and the loss is the heatmap MSE, with the cells under each
Gaussian weighted 10x (see heatmap_loss), summed over the stacks.
Writes OUT/last.pt (resumable), OUT/best.pt (lowest validation NMSE) and OUT/history.json.
"""
from __future__ import annotations

import argparse
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.data import DEFAULT_FACES
from core.files import check_output_path
from core.preprocess import INPUT_SIZE

from . import checkpoint
from .dataset import LEGACY_RECIPE
from .evaluate import Predictor, torch_predictor
from .loop import fit, open_run
from .model import count_flops, count_parameters
from .train import record_epoch, training_data, validate

FORMAT = "fan-checkpoint-v1"


@dataclass(frozen=True)
class FANConfig:
    """Everything needed to rebuild the network; stored in checkpoints."""

    name: str = "fan_star"
    input_size: int = 256
    num_landmarks: int = 68
    stacks: int = 2
    width: int = 64
    depth: int = 4  # hourglass levels: 64 -> 32 -> 16 -> 8 -> 4
    heatmap_size: int = 64
    sigma: float = 1.5  # target Gaussian, heatmap pixels

    def to_dict(self) -> dict:
        return asdict(self)


class ConvBlock(nn.Module):
    """FAN's hierarchical, parallel and multi-scale residual block: three pre-activated 3x3 convs of
    out/2, out/4 and out/4 channels, each fed by the previous, concatenated, plus the (projected) input."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        c2, c4 = cout // 2, cout // 4
        self.convs = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(a), nn.ReLU(), nn.Conv2d(a, b, 3, padding=1, bias=False))
            for a, b in ((cin, c2), (c2, c4), (c4, cout - c2 - c4))
        )
        self.skip = (nn.Identity() if cin == cout else
                     nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs, y = [], x
        for conv in self.convs:
            y = conv(y)
            outs.append(y)
        return torch.cat(outs, 1) + self.skip(x)


class Hourglass(nn.Module):
    """Recursive hourglass: a full-resolution branch plus pool -> block -> (inner hourglass) -> block -> upsample."""

    def __init__(self, depth: int, width: int):
        super().__init__()
        self.up = ConvBlock(width, width)
        self.down = ConvBlock(width, width)
        self.inner = Hourglass(depth - 1, width) if depth > 1 else ConvBlock(width, width)
        self.out = ConvBlock(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.out(self.inner(self.down(F.avg_pool2d(x, 2))))
        return self.up(x) + F.interpolate(low, scale_factor=2.0, mode="nearest")


class FAN(nn.Module):
    """256x256 RGB face crop -> list of (N, 68, 64, 64) heatmaps, one per stack (the last is the prediction)."""

    def __init__(self, config: FANConfig = FANConfig()):
        super().__init__()
        if config.input_size != 4 * config.heatmap_size:
            raise ValueError("the stem downsamples by 4: input_size must be 4 * heatmap_size")
        self.config = config
        w, k = config.width, config.num_landmarks
        self.stem = nn.Sequential(  # 256 -> 128 (conv) -> 64 (pool), as FAN's conv1/conv2/pool/conv3/conv4
            nn.Conv2d(3, w // 2, 7, stride=2, padding=3, bias=False),
            ConvBlock(w // 2, w // 2), nn.AvgPool2d(2), ConvBlock(w // 2, w), ConvBlock(w, w),
        )
        self.hourglasses = nn.ModuleList(Hourglass(config.depth, w) for _ in range(config.stacks))
        self.features = nn.ModuleList(
            nn.Sequential(ConvBlock(w, w), nn.Conv2d(w, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
            for _ in range(config.stacks)
        )
        self.heads = nn.ModuleList(nn.Conv2d(w, k, 1) for _ in range(config.stacks))
        # Intermediate supervision: features and heatmaps of stack i are mapped back into the input of stack i+1.
        self.remap_features = nn.ModuleList(nn.Conv2d(w, w, 1) for _ in range(config.stacks - 1))
        self.remap_heatmaps = nn.ModuleList(nn.Conv2d(k, w, 1) for _ in range(config.stacks - 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        heatmaps = []
        for i in range(self.config.stacks):
            f = self.features[i](self.hourglasses[i](x))
            h = self.heads[i](f)
            heatmaps.append(h)
            if i < self.config.stacks - 1:
                x = x + self.remap_features[i](f) + self.remap_heatmaps[i](h)
        return heatmaps


# Heatmap cell j averages crop pixels 4j .. 4j+3, whose centres (core.preprocess: pixel centres at
# integers) average 4j + 1.5; a normalised coordinate t = crop px / 256 thus lies at cell 64 t - 0.375.
def to_heatmap_coords(points: torch.Tensor, heatmap_size: int = 64, input_size: int = INPUT_SIZE) -> torch.Tensor:
    """Normalised crop coordinates -> heatmap pixel coordinates (cell centres at integers)."""
    stride = input_size / heatmap_size
    return (points * input_size - (stride - 1) / 2) / stride


def from_heatmap_coords(coords: torch.Tensor, heatmap_size: int = 64, input_size: int = INPUT_SIZE) -> torch.Tensor:
    stride = input_size / heatmap_size
    return (coords * stride + (stride - 1) / 2) / input_size


def encode_heatmaps(points: torch.Tensor, heatmap_size: int = 64, sigma: float = 1.5) -> torch.Tensor:
    """(N, K, 2) normalised points -> (N, K, S, S) unnormalised Gaussians (peak 1 on a cell centre).

    Points outside the crop give truncated or empty maps, as in FAN.
    """
    c = to_heatmap_coords(points, heatmap_size)
    grid = torch.arange(heatmap_size, dtype=points.dtype, device=points.device)
    gx = torch.exp(-(grid - c[..., 0:1]) ** 2 / (2 * sigma ** 2))  # (N, K, S): separable
    gy = torch.exp(-(grid - c[..., 1:2]) ** 2 / (2 * sigma ** 2))
    return gy[..., :, None] * gx[..., None, :]


def decode_heatmaps(heatmaps: torch.Tensor) -> torch.Tensor:
    """(N, K, S, S) heatmaps -> (N, K, 2) normalised crop coordinates.

    Argmax, then a parabola through the log of the peak and its two neighbours along each axis
    (Zhang et al., DARK, CVPR 2020): exact for a Gaussian, where FAN's quarter-cell shift towards the
    higher neighbour rounds to 1 px at 256 scale. Offsets are clipped to half a cell; a peak on the
    border keeps its integer position along that axis.
    """
    n, k, s, _ = heatmaps.shape
    flat = heatmaps.reshape(n, k, s * s)
    idx = flat.argmax(-1)
    iy, ix = idx // s, idx % s
    logh = torch.log(flat.clamp_min(1e-10))

    def offset(i: torch.Tensor, step: int) -> torch.Tensor:
        inside = (i > 0) & (i < s - 1)
        lo = logh.gather(-1, (idx - step * inside.long())[..., None])[..., 0]
        hi = logh.gather(-1, (idx + step * inside.long())[..., None])[..., 0]
        mid = logh.gather(-1, idx[..., None])[..., 0]
        curvature = lo - 2 * mid + hi
        d = torch.where(inside & (curvature < 0), 0.5 * (lo - hi) / curvature.clamp_max(-1e-12), 0.0)
        return d.clamp(-0.5, 0.5)

    coords = torch.stack([ix + offset(ix, 1), iy + offset(iy, s)], -1).to(heatmaps.dtype)
    return from_heatmap_coords(coords, s)


class FANLandmarks(nn.Module):
    """FAN* with its decoder: (N, 3, 256, 256) -> (N, 68, 2) normalised crop coordinates, like MobileNet-L."""

    def __init__(self, fan: FAN):
        super().__init__()
        self.fan = fan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return decode_heatmaps(self.fan(x)[-1])


def heatmap_loss(heatmaps: list[torch.Tensor], target: torch.Tensor, foreground_weight: float = 10.0) -> torch.Tensor:
    """Weighted MSE against the target heatmaps, summed over stacks (intermediate supervision).

    With plain MSE the ~60 cells of each Gaussian are lost among 4096 background cells: FAN* sat at
    all-zero heatmaps (validation NMSE 177) after 2 epochs. Weighting the cells under the Gaussian
    (target > 0.01) by `foreground_weight`, as the weighted loss map of AWing (Wang et al., ICCV 2019)
    does, lets it escape that plateau within the budget this CPU affords.
    """
    weight = 1 + (foreground_weight - 1) * (target > 0.01).to(target.dtype)
    return sum((weight * (h - target) ** 2).mean() for h in heatmaps)


def load_fan(path: Path) -> FANLandmarks:
    """FAN* of a checkpoint with its decoder, in eval mode: (N, 3, 256, 256) -> (N, 68, 2)."""
    state = checkpoint.load(path, FORMAT)
    fan = FAN(FANConfig(**state["config"]))
    fan.load_state_dict(state["model"])
    return FANLandmarks(fan).eval()


def fan_predictor(checkpoint_path: Path) -> Predictor:
    """Predictor for train.evaluate.evaluate: uint8 BGR crops (N, 256, 256, 3) -> (N, 68, 2)."""
    return torch_predictor(load_fan(checkpoint_path))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=Path, default=DEFAULT_FACES, help="face folder with splits.csv (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=Path("runs/fan"), help="run folder (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=20, help="epochs (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=16, help="batch size (default: %(default)s)")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate, cosine decay (default: %(default)s)")
    ap.add_argument("--stacks", type=int, default=FANConfig.stacks, help="hourglasses (default: %(default)s)")
    ap.add_argument("--width", type=int, default=FANConfig.width, help="channels (default: %(default)s)")
    ap.add_argument("--limit", type=int, help="use only the first N training faces (quick runs, tests)")
    ap.add_argument("--val-limit", type=int, help="use only the first N validation faces")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    ap.add_argument("--force", action="store_true", help="start a fresh run in an OUT that holds one (overwrites it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", action="store_true", help="print parameters and multiply-adds, then exit")
    args = ap.parse_args(argv)
    if not args.size:  # --size writes nothing; a run is checked now, not when its first checkpoint is written
        try:
            check_output_path(args.out, folder=True)
        except ValueError as e:
            ap.error(str(e))
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    config = FANConfig(stacks=args.stacks, width=args.width)
    if args.size:
        fan = FAN(config)
        print(f"FAN* ({config.stacks} stacks, width {config.width}): {count_parameters(fan) / 1e6:.3f} M parameters, "
              f"{count_flops(fan) / 1e9:.3f} G multiply-adds at 256x256")
        return {}
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    log = lambda *a: print(*a, file=sys.stderr)

    # FAN* keeps the recipe it was measured with (black occluders, raw labels, no negatives)
    train_set, val = training_data(args.faces, args.limit, args.val_limit, args.seed, log, recipe=LEGACY_RECIPE,
                                   negatives=False)

    start_epoch, history, best = 0, [], float("inf")
    last_path = args.out / "last.pt"
    state = open_run(args.out, args.resume, args.force, args.epochs, lambda p: checkpoint.load(p, FORMAT))
    if state is not None:
        config = FANConfig(**state["config"])  # the run's own size, whatever the flags say
    model = FAN(config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, history, best = state["epoch"], state["history"], state["best_val_nmse"]
        log(f"resumed {last_path} at epoch {start_epoch}, best val NMSE {best:.3f}")
    schedule = dict(lr=args.lr, schedule="cosine", warmup_epochs=0)

    loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(args.seed))
    if len(loader) == 0:
        raise SystemExit(f"only {len(train_set)} training faces: fewer than one batch of {args.batch}")

    def step_loss(batch: dict) -> torch.Tensor:
        return heatmap_loss(model(batch["x"]), encode_heatmaps(batch["landmarks"], config.heatmap_size, config.sigma))

    history, best = fit(
        model, opt, loader, train_set, schedule=schedule, epochs=args.epochs, start_epoch=start_epoch,
        seed=args.seed, step_loss=step_loss, validate_epoch=lambda: validate(FANLandmarks(model), val, batch=8),
        record=lambda epoch, losses, scores, t0, best: record_epoch(
            args.out, model, FORMAT, opt, history, best, epoch, losses, scores, t0, log,
            train_faces=train_set.faces, args={k: str(v) for k, v in vars(args).items()}),
        history=history, best=best, log=log)
    return {"history": history, "best_val_nmse": best}


if __name__ == "__main__":
    main()
