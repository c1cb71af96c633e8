"""The numbers behind docs/results.md: every method, ablation run and candidate checkpoint evaluated and timed
under one protocol (train.evaluate), and the statistics the report states (seed noise, collapsed runs, lost
cells). scripts/results_report.py turns them into tables, plots and prose; the ONNX Runtime timing of the
networks is handed in by it (exporting belongs to the export layer above this one).
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from core.occlusion import CONDITIONS, PAPER_CONDITIONS
from core.samples import occluded_crops
from runtime.benchmark import Candidate, machine_info, time_interleaved

from . import checkpoint
from .baselines import dlib_pretrained_predictor
from .esr import esr_predictor
from .evaluate import Predictor, evaluate, format_tables, load_faces, torch_ms_per_face, torch_predictor
from .fan import FORMAT as FAN_FORMAT
from .fan import load_fan
from .model import ABLATIONS

# The model issue's targets (test split, all faces, NMSE %) and head-quality floors.
TARGETS = {"clean": 3.5, "10-20": 4.3, "30-40": 5.8, "40-50": 7.2, "50-60": 9.3, "center25": 10.5}
VISIBILITY_AUC_TARGET, FACE_AUC_TARGET = 0.95, 0.99


SPEED_WARMUP = 5


def budget(run_dir: Path, state: dict) -> dict:
    """Training budget of a run: epochs done (last.pt when present), the epoch of the evaluated checkpoint
    ``state`` and the training faces."""
    last = run_dir / "last.pt"
    done = checkpoint.load(last, state["format"])["epoch"] if last.is_file() else state["epoch"]
    return {"epochs": done, "evaluated_epoch": state["epoch"], "train_faces": state["train_faces"],
            "best_val_nmse": state["best_val_nmse"]}


def clean_crops(faces_dir: Path, limit: int | None) -> np.ndarray:
    """Unoccluded 256x256 crops of the evaluated test faces, as evaluate() crops them."""
    faces = load_faces(faces_dir, "test", limit)
    return np.stack([occluded_crops(faces_dir, f, None, ["clean"], 0)[1]["clean"][2] for f in faces])


def measure_speed(timed: dict[tuple[str, str], Predictor], crops: np.ndarray) -> dict:
    """Batch-1 time of every (method, backend) predictor over the clean crops, all interleaved in one run.

    Each predictor is timed end to end (uint8 crop in, landmarks out) on the split's faces in turn, as many
    timed calls as faces; total_s sums them: the time to predict the whole split at batch 1. (The untimed
    call that wakes each block takes a face too, so a few faces are timed twice and as many not at all;
    a call's cost hardly depends on the face.)
    """
    def call(predict: Predictor):
        order = itertools.cycle(range(len(crops)))

        def one(n: int) -> np.ndarray:
            i = next(order)
            return predict(crops[i:i + n])

        return one

    cands = [Candidate(f"{m} {b}", "model", b, "fp32", call(p)) for (m, b), p in timed.items()]
    print(f"timing {len(cands)} predictors at batch 1 on {len(crops)} clean faces, interleaved", flush=True)
    times = time_interleaved(cands, 1, SPEED_WARMUP, len(crops))
    methods: dict[str, dict] = {}
    for (m, b) in timed:
        t = np.array(times[f"{m} {b}"])
        methods.setdefault(m, {})[b] = {"median_ms": float(np.median(t) * 1000), "total_s": float(t.sum())}
    return {"faces": len(crops), "batch": 1, "warmup": SPEED_WARMUP,
            "timed": "uint8 crop -> landmarks (input conversion included), as many calls as faces, "
                     "interleaved in blocks of 10 calls (runtime.benchmark.time_interleaved)",
            "machine": machine_info(None), "methods": methods}


SEED_SUFFIX = "-seed"  # runs/ablation/no-SE is seed 0; runs/ablation/no-SE-seed1 the same variant with --seed 1


def variant_of(run: str) -> str:
    return run.split(SEED_SUFFIX)[0]


def ablation_runs(root: Path, faces: Path) -> dict[str, Path]:
    """Every ablation run's last.pt, by run name: each variant's seed-0 folder, then its -seedN repeats.

    The ablation evaluates last.pt, the weights at the end of the shared budget: best.pt would let a run that
    never beat its first epoch (a mean face) stand for its variant.
    """
    runs = {}
    for variant in ABLATIONS:
        if not (root / variant / "last.pt").is_file():
            print(f"ablation {variant}: {root / variant / 'last.pt'} not found, skipped; train it with `python -m "
                  f"train.train --variant {variant} --faces {faces} --out {root / variant}` with the other runs' "
                  f"--epochs and --limit (and repeats with --seed N --out {root / variant}{SEED_SUFFIX}N)")
            continue
        repeats = sorted((p for p in root.glob(f"{variant}{SEED_SUFFIX}*") if (p / "last.pt").is_file()),
                         key=lambda p: int(p.name.rsplit(SEED_SUFFIX, 1)[1]))
        runs |= {p.name: p / "last.pt" for p in (root / variant, *repeats)}
    return runs


def run_evaluations(args: argparse.Namespace, workdir: Path,
                    onnx_predictor: Callable[[torch.nn.Module, Path], Predictor]) -> dict:
    """Evaluate and time every method and ablation run whose file exists; returns the results.json document.

    ``onnx_predictor(model, path)``: the network exported to ``path`` and run by ONNX Runtime (timing).
    """
    faces, masks, limit = args.faces, args.masks, args.limit
    found: dict[str, tuple[Predictor, dict[str, Predictor]]] = {}  # name: (evaluation predictor, timed by backend)
    if args.checkpoint.is_file():
        model = checkpoint.load_model(args.checkpoint)
        eager = torch_predictor(model)
        found["MobileNet-L"] = eager, {"pytorch-eager": eager, "onnxruntime": onnx_predictor(model, workdir / "m.onnx")}
    else:
        print(f"MobileNet-L: {args.checkpoint} not found, skipped; train it with "
              f"`python -m train.train --faces {faces} --out runs/mobilenet_l` and pass --checkpoint runs/mobilenet_l/best.pt")
    if args.fan.is_file():
        fan = load_fan(args.fan)
        eager = torch_predictor(fan)
        found["FAN*"] = eager, {"pytorch-eager": eager, "onnxruntime": onnx_predictor(fan, workdir / "fan.onnx")}
    else:
        print(f"FAN*: {args.fan} not found, skipped; train it with `python -m train.fan --faces {faces} --out {args.fan.parent}`")
    have_dlib = importlib.util.find_spec("dlib") is not None
    if not have_dlib:
        print("ESR*: dlib not installed, skipped; install it with `pip install '.[teacher]'`")
    elif args.esr.is_file():
        esr = esr_predictor(args.esr)
        found["ESR*"] = esr, {"dlib": esr}
    else:
        print(f"ESR*: {args.esr} not found, skipped; train it with `python -m train.esr --faces {faces} --out {args.esr}`")
    if have_dlib and importlib.util.find_spec("face_recognition_models") is not None:
        teacher = dlib_pretrained_predictor()
        found["dlib-pretrained"] = teacher, {"dlib": teacher}
    else:
        print("dlib-pretrained: dlib or its 68-point model not installed, skipped; install them with `pip install '.[teacher]'`")

    methods = {}
    for name, (predict, _) in found.items():
        print(f"\n== {name}", flush=True)
        methods[name], _ = evaluate(predict, faces, masks, "test", limit)
        print(format_tables(methods[name], name))

    ablation = evaluate_ablation(args)
    timed = {(m, b): p for m, (_, by_backend) in found.items() for b, p in by_backend.items()}
    speed = measure_speed(timed, clean_crops(faces, limit)) if timed else {}
    for name, res in methods.items():  # the method's own library: PyTorch eager for the networks, dlib otherwise
        res["ms_per_face"] = next(iter(speed["methods"][name].values()))["median_ms"]
    if "FAN*" in methods:
        methods["FAN*"]["budget"] = budget(args.fan.parent, checkpoint.load(args.fan, FAN_FORMAT))
    return {"methods": methods, "ablation": ablation, "speed": speed,
            "presets": preset_ab(args.ablation_dir / "full", args.paper_preset_run)}


def evaluate_candidates(args: argparse.Namespace) -> dict:
    """Each --candidate NAME=CHECKPOINT under the test protocol with the textured condition and, for models
    with heads, visibility and face-score quality; with the checkpoint's epoch; mirror-averaged with --mirror."""
    out = {}
    for item in args.candidate:
        name, _, path = item.partition("=")
        if not path or not Path(path).is_file():
            raise SystemExit(f"--candidate {item!r}: use NAME=CHECKPOINT with an existing checkpoint")
        print(f"\n== candidate {name}", flush=True)
        state = checkpoint.load(Path(path))
        out[name], _ = evaluate(torch_predictor(checkpoint.load_model(Path(path)), mirror=args.mirror), args.faces,
                                args.masks, "test", args.limit)
        out[name]["checkpoint"] = {"path": path, "epoch": state.get("epoch"),
                                   "best_val_nmse": state.get("best_val_nmse"), "recipe": state.get("recipe")}
        out[name]["mirror"] = args.mirror
        print(format_tables(out[name], name))
    return out


# The model issue's targets (test split, all faces, NMSE %) and head-quality floors.


def evaluate_ablation(args: argparse.Namespace) -> dict:
    """Every ablation run of --ablation-dir evaluated under the test protocol, with its budget."""
    ablation = {}
    for name, path in ablation_runs(args.ablation_dir, args.faces).items():
        print(f"\n== ablation {name}", flush=True)
        model = checkpoint.load_model(path)
        ablation[name], _ = evaluate(torch_predictor(model), args.faces, args.masks, "test", args.limit)
        ablation[name]["ms_per_face"] = torch_ms_per_face(model)
        ablation[name]["budget"] = budget(path.parent, checkpoint.load(path))
        print(format_tables(ablation[name], f"ablation {name}"))
    return ablation


def preset_ab(default_run: Path, paper_run: Path) -> dict:
    """Our default training preset against the paper's at the same budget: the ablation's `full` control
    (default preset) and a run of `--preset paper` with the same --limit and --epochs. Validation NMSE per epoch."""
    out = {}
    for name, run in (("default", default_run), ("paper", paper_run)):
        if not (run / "last.pt").is_file():
            print(f"preset A/B: {run / 'last.pt'} not found, skipped; train it with `python -m train.train "
                  f"--preset {name} --out {run} --limit 1000 --val-limit 200 --epochs 3` (or the ablation's `full`)")
            return {}
        state = checkpoint.load(run / "last.pt")
        out[name] = {"preset": state["preset"], "train_config": state["train_config"],
                     "train_faces": state["train_faces"], "epochs": state["epoch"],
                     "val_nmse": [h["val_nmse"] for h in state["history"]]}
    return out


def by_variant(ablation: dict[str, dict]) -> dict[str, list[dict]]:
    """Ablation runs grouped by variant, seeds in run order."""
    groups: dict[str, list[dict]] = {}
    for name, res in ablation.items():
        groups.setdefault(variant_of(name), []).append(res)
    return groups


def mean_nmse(runs: list[dict]) -> dict[str, dict[str, float | None]]:
    """NMSE per face group and condition averaged over runs (None where no run has faces of that group)."""
    out = {}
    for group, row in runs[0]["nmse"].items():
        out[group] = {}
        for c in row:
            values = [r["nmse"][group][c] for r in runs if r["nmse"][group][c] is not None]
            out[group][c] = float(np.mean(values)) if values else None
    return out


def collapsed(res: dict) -> bool:
    """A run whose NMSE is the same (within 1 %) under every condition, clean to the centre square, predicts
    one fixed shape whatever it is shown: it did not learn, and its NMSE measures no component."""
    row = [res["nmse"]["all"][c] for c in CONDITIONS]
    return max(row) - min(row) < 0.01 * max(row)


def seeds_apart(variant: list[float], control: list[float]) -> str:
    """Whether a component's effect stands clear of seed noise: every seed of the variant on one side of every
    seed of the control. Were the two alike, that would happen by chance once in C(n+m, n) orderings."""
    if len(variant) < 2 or len(control) < 2:
        return "one seed: noise unknown"
    chance = f"chance 1 in {math.comb(len(variant) + len(control), len(variant))}"
    if min(variant) > max(control):
        return f"**helps** (every seed apart; {chance})"
    if max(variant) < min(control):
        return f"**hurts** (every seed apart; {chance})"
    return "not told from seed noise (seeds overlap)"


def lost_cells(nmse: dict[str, dict[str, dict]]) -> tuple[int, list[str]]:
    """Cells of Tables 3 and 4 where MobileNet-L is not the lowest: (cells compared, 'side 10-20 (to FAN*)', ...)."""
    rivals = [m for m in ("FAN*", "ESR*") if m in nmse]
    lost, cells = [], 0
    for group in ("frontal", "side"):
        for c in PAPER_CONDITIONS:
            ours = nmse["MobileNet-L"][group][c]
            if ours is None:
                continue
            cells += 1
            beaten_by = [m for m in rivals if nmse[m][group][c] is not None and nmse[m][group][c] < ours]
            if beaten_by:
                lost.append(f"{group} {c} (to {' and '.join(beaten_by)})")
    return cells, lost
