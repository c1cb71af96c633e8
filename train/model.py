"""MobileNet-L (Pang et al., Electronics 2025, Table 1): MobileNetV3-small backbone + S1/S2/S3 head.

The backbone is a table of block configurations, one row per line of Table 1.
Activations are nn.Hardswish / nn.Hardsigmoid / nn.ReLU and SE is
GlobalAveragePool -> Conv -> ReLU -> Conv -> HardSigmoid -> Mul, so the ONNX
graph holds only ops TensorRT fuses (no Shape/Gather/Reshape in the backbone).

ModelConfig's switches (se, hard_swish, linear_bottleneck, residual) build the
ablation variants of the paper's Figure 9; ABLATIONS names them. ``heads=True`` adds two
small heads on the same S1/S2/S3 features: per-landmark visibility and a face score
(MODELS["mobilenet_l"], what we ship); ``heads=False`` is the paper's 136-output network.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn


@dataclass(frozen=True)
class BlockConfig:
    kernel: int
    expand: int
    out: int
    se: bool
    act: str  # "HS" hard-swish or "RE" relu
    stride: int


# Table 1: input conv (16, HS, stride 2) then these bottlenecks.
MOBILENET_L_BLOCKS: tuple[BlockConfig, ...] = (
    BlockConfig(3, 16, 16, True, "RE", 2),
    BlockConfig(3, 72, 24, False, "RE", 2),
    BlockConfig(3, 88, 24, False, "RE", 1),
    BlockConfig(5, 96, 40, True, "HS", 2),
    BlockConfig(5, 240, 40, True, "HS", 1),
    BlockConfig(5, 240, 40, True, "HS", 1),
    BlockConfig(5, 120, 48, True, "HS", 1),
    BlockConfig(5, 144, 48, True, "HS", 1),
    BlockConfig(5, 288, 96, True, "HS", 2),
    BlockConfig(5, 576, 96, True, "HS", 1),
    BlockConfig(5, 576, 96, True, "HS", 1),
)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; stored in checkpoints."""

    name: str = "mobilenet_l"
    input_size: int = 256
    num_landmarks: int = 68
    stem: int = 16
    c2: int = 576  # 1x1 conv on C1
    s3_hidden: int = 1024
    s1: int = 128
    s2: int = 128
    s3: int = 64
    # Ablation switches (Figure 9); the defaults are MobileNet-L. Checkpoints written before they
    # existed lack these keys and so load as the full network.
    se: bool = True  # False: no squeeze-and-excitation in any block
    hard_swish: bool = True  # False: ReLU wherever Table 1 has hard-swish (stem, blocks, C2, S3 head)
    linear_bottleneck: bool = True  # False: the block's activation after its 1x1 projection too
    residual: bool = True  # False: no skip connections (plain bottlenecks)
    # Visibility and face-score heads. Off is the paper's network; checkpoints written before the heads
    # existed lack the key and so load as that.
    heads: bool = False
    vis_channels: int = 8  # the visibility head's map reduced to this many channels feeds it
    # The map the visibility head sees: -1 the S1 map (8x8); k >= 0 the output of backbone block k, finer
    # (block 2: 32x32, block 7: 16x16), since a point under a thin stroke is invisible to an 8x8 cell.
    vis_tap: int = -1
    # Backbone blocks whose maps the visibility head also reads at each predicted point (PointSampler); empty: none.
    vis_points: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "vis_points", tuple(self.vis_points))  # a checkpoint may hold a list
        # the one check of the block indices (train.train turns its ValueError into a usage error)
        blocks = len(MOBILENET_L_BLOCKS)
        if not -1 <= self.vis_tap < blocks:
            raise ValueError(f"vis_tap must be -1 (the S1 map) or a block index 0-{blocks - 1}, got {self.vis_tap}")
        if not all(0 <= k < blocks for k in self.vis_points):
            raise ValueError(f"vis_points must be block indices 0-{blocks - 1}, got {self.vis_points}")

    def to_dict(self) -> dict:
        return asdict(self)


# The networks a run can train: ours (with heads) and the paper's (136 outputs, for the paper comparison).
# Visibility reads blocks 0, 2 and 7 (64x64, 32x32, 16x16) at the points: val AUC under the Liu masks 0.96-0.97
# against 0.72-0.84 from pooled features alone, 0.93-0.96 from block 2 alone (README, visibility).
MODELS: dict[str, ModelConfig] = {"mobilenet_l": ModelConfig(heads=True, vis_points=(0, 2, 7)), "paper": ModelConfig()}

# Figure 9's variants, all of the paper's network.
ABLATIONS: dict[str, ModelConfig] = {
    "full": ModelConfig(),
    "no-SE": ModelConfig(se=False),
    "ReLU": ModelConfig(hard_swish=False),
    "non-linear-bottleneck": ModelConfig(linear_bottleneck=False),
    "no-residual": ModelConfig(residual=False),
}


def variant_name(config: ModelConfig) -> str:
    """The MODELS or ABLATIONS name of a config, or 'custom'."""
    return next((name for name, c in {**MODELS, **ABLATIONS}.items() if c == config), "custom")


def _act(kind: str) -> nn.Module:
    return nn.Hardswish() if kind == "HS" else nn.ReLU()


def _make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: str | None = "HS"):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act:
            layers.append(_act(act))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """x * hardsigmoid(W2 relu(W1 avgpool(x))), as in MobileNetV3."""

    def __init__(self, channels: int):
        super().__init__()
        squeeze = _make_divisible(channels // 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """bneck: 1x1 expand + BN + NL, kxk depthwise + BN + NL, optional SE, 1x1 linear projection + BN.

    ``linear=False`` adds NL after the projection; ``residual=False`` drops the skip connection.
    """

    def __init__(self, cin: int, cfg: BlockConfig, linear: bool = True, residual: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        if cfg.expand != cin:
            layers.append(ConvBNAct(cin, cfg.expand, 1, act=cfg.act))
        layers.append(ConvBNAct(cfg.expand, cfg.expand, cfg.kernel, cfg.stride, groups=cfg.expand, act=cfg.act))
        if cfg.se:
            layers.append(SqueezeExcite(cfg.expand))
        layers.append(ConvBNAct(cfg.expand, cfg.out, 1, act=None if linear else cfg.act))
        self.block = nn.Sequential(*layers)
        self.residual = residual and cfg.stride == 1 and cin == cfg.out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class PointSampler(nn.Module):
    """Per-landmark visibility logits from backbone maps read at the predicted points.

    Whether a point lies under a thin stroke is a local question that pooled features cannot answer. Each
    map is averaged under a Gaussian one cell wide centred on the point (separable: a MatMul along x, a weighted
    sum along y, ops every TensorRT ONNX parser we target has, unlike GridSample); a small classifier shared by all points, plus a learnt offset per
    landmark, turns those features and the point's position into a logit.
    """

    def __init__(self, channels: tuple[int, ...], num_landmarks: int, act: str, hidden: int = 32):
        super().__init__()
        self.mix = nn.Linear(sum(channels) + 4, hidden)  # + the point and how far it lies outside the crop
        self.landmark = nn.Parameter(torch.zeros(num_landmarks, hidden))
        self.act = _act(act)
        self.out = nn.Linear(hidden, 1)

    def forward(self, maps: list[torch.Tensor], points: torch.Tensor) -> torch.Tensor:
        """maps: (N, C_i, S_i, S_i); points: (N, K, 2) normalised crop coordinates -> logits (N, K)."""
        outside = points - points.clamp(0, 1)
        x = torch.cat([*(sample(m, points) for m in maps), points, outside], -1)
        # the layers run on (N*K, features): exported as named Gemms, which the INT8 exclusions (/vis_points/)
        # match; on (N, K, features) onnxsim rewrote them into unnamed Gemms that ModelOpt quantized
        points_n, hidden = self.landmark.shape
        h = self.mix(x.reshape(-1, x.shape[-1])).reshape(-1, points_n, hidden) + self.landmark
        return self.out(self.act(h).reshape(-1, hidden)).reshape(-1, points_n)


# Cells farther than ~7 from the point all weigh exp(-25) ~ 1e-11: nothing next to the centre's ~2.5, but never
# a subnormal float, which the untruncated Gaussian gives at 13-14 cells and which x86 CPUs multiply ~100 times
# slower (with FP32 ONNX Runtime on an Intel Xeon this sampler took 8.6 of a crop's 12 ms)
FAR_CELLS_D2 = 50.0


def cell_weights(points: torch.Tensor, side: int) -> torch.Tensor:
    """(N, K, 2) points -> (N, K, 2, side): each coordinate's normalised Gaussian weights over the cells of its axis."""
    grid = torch.arange(side, dtype=points.dtype, device=points.device)
    cells = (points * side - 0.5).clamp(0, side - 1)  # cell j's centre is at (j + 0.5) / side
    d = grid - cells[..., None]
    w = torch.exp(-0.5 * (d * d).clamp(0, FAR_CELLS_D2))
    return w / w.sum(-1, keepdim=True)


def sample(m: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(N, C, S, S) square map averaged under a Gaussian one cell wide at each of (N, K, 2) points -> (N, K, C).

    Points outside the crop read the nearest border cells.
    """
    channels, side = m.shape[1], m.shape[-1]
    w = cell_weights(points.to(m.dtype), side)
    wx, wy = w[:, :, 0].transpose(1, 2), w[:, :, 1].transpose(1, 2)[:, None]  # (N, S, K), (N, 1, S, K)
    # rows first, as one (C*S, S) x (S, K) product per crop: a batched product per channel is slower
    rows = (m.reshape(-1, channels * side, side) @ wx).reshape(-1, channels, side, wx.shape[-1])
    return (rows * wy).sum(2).transpose(1, 2)  # (N, C, S, K) -> (N, K, C)


class Backbone(nn.Sequential):
    """The stem and the bottlenecks -> (C1, {k: output map of block k for k in taps})."""

    def forward(self, x: torch.Tensor, taps: frozenset[int] = frozenset()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        maps = {}
        for i, layer in enumerate(self):
            x = layer(x)
            if i - 1 in taps:  # self[0] is the stem, so block k ends at self[k + 1]
                maps[i - 1] = x
        return x, maps


HEAD_MODULES = ("vis_map", "vis_points", "visibility", "face")  # the modules of the visibility and face-score heads


class MobileNetL(nn.Module):
    """256x256 RGB face crop -> (N, 68, 2) landmarks in normalised crop coordinates.

    With heads it returns (landmarks, visibility (N, 68), face_score (N,)), the two as probabilities
    (or logits with ``logits=True``, for the training loss).
    """

    def __init__(self, config: ModelConfig = ModelConfig(), blocks: tuple[BlockConfig, ...] = MOBILENET_L_BLOCKS):
        super().__init__()
        self.config = config
        hs = "HS" if config.hard_swish else "RE"
        layers: list[nn.Module] = [ConvBNAct(3, config.stem, 3, stride=2, act=hs)]
        cin = config.stem
        for cfg in blocks:
            cfg = replace(cfg, se=cfg.se and config.se, act=hs if cfg.act == "HS" else cfg.act)
            layers.append(InvertedResidual(cin, cfg, config.linear_bottleneck, config.residual))
            cin = cfg.out
        self.features = Backbone(*layers)  # -> C1 (8x8x96)
        self.conv_c2 = ConvBNAct(cin, config.c2, 1, act=hs)  # -> C2 (8x8x576)
        self.pool = nn.AdaptiveAvgPool2d(1)  # the 8x8 average pools of Table 1
        self.s3 = nn.Sequential(
            nn.Conv2d(config.c2, config.s3_hidden, 1), _act(hs), nn.Conv2d(config.s3_hidden, config.s3, 1)
        )
        self.s1 = nn.Conv2d(cin, config.s1, 1)
        self.s2 = nn.Conv2d(config.c2, config.s2, 1)
        features = config.s1 + config.s2 + config.s3
        self.fc = nn.Linear(features, config.num_landmarks * 2)
        if config.heads:
            # Visibility needs to know where things are, which the pooled vector blurs: it also sees the
            # S1 map (8x8) reduced to a few channels.
            if config.vis_tap >= 0:
                tap = blocks[config.vis_tap]
                stride = 2 * math.prod(b.stride for b in blocks[:config.vis_tap + 1])  # the stem halves too
                tap_channels, side = tap.out, config.input_size // stride
            else:
                tap_channels, side = config.s1, config.input_size // 32
            self.vis_map = nn.Conv2d(tap_channels, config.vis_channels, 1)
            spatial = config.vis_channels * side ** 2
            self.visibility = nn.Sequential(nn.Linear(features + spatial, 128), _act(hs),
                                            nn.Linear(128, config.num_landmarks))
            self.face = nn.Sequential(nn.Linear(features, 64), _act(hs), nn.Linear(64, 1))
            if config.vis_points:
                self.vis_points = PointSampler(tuple(blocks[k].out for k in config.vis_points),
                                               config.num_landmarks, hs)
        # Training only: Gaussian noise on the heads' inputs, this fraction of each channel's spread in the batch.
        # An INT8 engine moves these features by about a fifth of their spread (README, heads section); heads trained on
        # exact features turn that into flipped decisions.
        self.head_noise = 0.0
        self._init_weights()

    def freeze_landmarks(self) -> None:
        """Train only the heads: the landmark path's weights and batch-norm statistics stay as they are, so
        the landmarks of the network it started from are kept exactly."""
        self.landmarks_frozen = True
        for name, p in self.named_parameters():
            p.requires_grad_(name.split(".")[0] in HEAD_MODULES)
        self.train(self.training)

    def train(self, mode: bool = True) -> "MobileNetL":
        super().train(mode)
        if getattr(self, "landmarks_frozen", False):
            for name, module in self.named_children():
                if name not in HEAD_MODULES:
                    module.eval()
        return self

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc.weight, std=1e-3)
        nn.init.constant_(self.fc.bias, 0.5)  # start at the crop centre

    def forward(self, x: torch.Tensor, logits: bool = False):
        c1, maps = self.features(x, self._taps())
        c2 = self.conv_c2(c1)
        s1_map = self.s1(c1)
        s1 = self.pool(s1_map)
        s2 = self.pool(self.s2(c2))
        s3 = self.s3(self.pool(c2))
        s = torch.cat([s1, s2, s3], dim=1).flatten(1)
        landmarks = self.fc(s).view(-1, self.config.num_landmarks, 2)
        if not self.config.heads:
            return landmarks
        maps = {k: self._noisy(m) for k, m in maps.items()}
        s, vis_in = self._noisy(s), maps[self.config.vis_tap] if self.config.vis_tap >= 0 else self._noisy(s1_map)
        vis = self.visibility(torch.cat([s, self.vis_map(vis_in).flatten(1)], dim=1))
        if self.config.vis_points:
            # the points steer the sampling only: the visibility loss must not move the landmarks
            vis = vis + self.vis_points([maps[k] for k in self.config.vis_points], landmarks.detach())
        face = self.face(s).squeeze(1)
        if logits:
            return landmarks, vis, face
        return landmarks, torch.sigmoid(vis), torch.sigmoid(face)

    def _taps(self) -> frozenset[int]:
        """The backbone blocks whose output maps the heads read."""
        if not self.config.heads:
            return frozenset()
        return frozenset(k for k in (self.config.vis_tap, *self.config.vis_points) if k >= 0)

    def _noisy(self, x: torch.Tensor) -> torch.Tensor:
        """x with the training-time head noise (``head_noise``), per channel; x itself in eval mode."""
        if not (self.training and self.head_noise):
            return x
        spread = x.detach().std(dim=[0, *range(2, x.dim())], keepdim=True)
        return x + torch.randn_like(x) * spread * self.head_noise


def landmarks_of(output) -> torch.Tensor:
    """The landmarks of a forward pass, with or without heads."""
    return output[0] if isinstance(output, tuple) else output


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_size: int = 256) -> int:
    """Multiply-adds of one forward pass (convs and linear layers), counted with forward hooks."""
    total = 0

    def conv_hook(m: nn.Conv2d, inp, out):
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Linear, inp, out):
        nonlocal total
        total += out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(linear_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        was_training = model.training
        model.eval()
        model(torch.zeros(1, 3, input_size, input_size))
        model.train(was_training)
    for h in hooks:
        h.remove()
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description="Print MobileNet-L's parameter count and multiply-adds.")
    ap.add_argument("--variant", choices=[*MODELS, *ABLATIONS], default="mobilenet_l",
                    help="network (default: %(default)s)")
    args = ap.parse_args()
    model = MobileNetL({**MODELS, **ABLATIONS}[args.variant])
    macs = count_flops(model)
    full = args.variant in ("paper", "full")
    print(f"MobileNet-L{'' if full else f' ({args.variant})'}: {count_parameters(model) / 1e6:.3f} M parameters, "
          f"{macs / 1e9:.3f} G multiply-adds = {2 * macs / 1e9:.3f} GFLOPs at 256x256"
          f"{' (paper: about 1.7 M and 0.16 GFLOPs)' if full else ''}")


if __name__ == "__main__":
    main()
