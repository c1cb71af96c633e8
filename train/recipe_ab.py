"""The recipe A/B: each component of the training recipe switched off in turn, at one reduced budget.

    python -m train.recipe_ab --faces ../shared/data/faces --out runs/recipe     # train what is missing, report
    python -m train.recipe_ab --report-only                                      # report from finished runs

Every arm starts from the same weights (--init), sees the same evenly spread training faces for the
same epochs and learning-rate schedule, and differs from the control in one switch only. Runs are read
at their last epoch (the end of the shared budget) on the validation split, per kind of sample
(clean, centre square, synthetic black masks, textured masks, photometrically degraded). Finished arms
are skipped, so the command can be stopped and started again. Writes OUT/recipe.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from core.data import DEFAULT_FACES
from core.files import atomic_write_bytes, write_json

# arm name: (extra train.train flags, what the arm tests). The control is the shipped recipe.
ARMS: dict[str, tuple[list[str], str]] = {
    "control": ([], "the shipped recipe"),
    "no-heads": (["--model", "paper"], "visibility and face-score heads (paper network without them)"),
    "loss-l1": (["--loss", "l1"], "Wing loss (L1 instead)"),
    "labels-raw": (["--labels", "raw"], "averaging the teacher with its mirrored prediction (raw labels)"),
    "no-photometric": (["--photometric", "0"], "photometric augmentation (none)"),
    "black-occluders": (["--textured", "0"], "textured occluders (black only)"),
    "control-seed1": (["--seed", "1"], "seed noise: the control again with another seed"),
    "labels-down": (["--labels", "down"], "down-weighting doubtful labels instead of averaging"),
    "labels-drop": (["--labels", "drop"], "dropping doubtful labels instead of averaging"),
    "heads-light": (["--head-weight", "0.2"], "head losses at full weight (0.2 instead)"),
    "no-negatives": (["--negatives", "0"], "face-score negatives in the batch (none: the score cannot learn)"),
    "lr-low": (["--lr", "1e-4"], "the fine-tuning learning rate 5e-4 (1e-4 instead)"),
    "negatives-extra": (["--negatives-mode", "extra"], "negatives in place of faces (on top of them instead)"),
}
BUDGET = ["--spread", "2400", "--epochs", "3", "--lr", "5e-4"]
# The control's recipe where it differs from today's defaults: the A/B was run with photometric augmentation
# on (0.7) and negatives in place of faces, which it then changed (train.dataset.Recipe).
CONTROL = ["--photometric", "0.7", "--negatives-mode", "in-batch"]
EPOCHS = int(BUDGET[BUDGET.index("--epochs") + 1])


def finished(run: Path, epochs: int = EPOCHS) -> bool:
    history = run / "history.json"
    return history.exists() and len(json.loads(history.read_text())) >= epochs


def train_arm(name: str, faces: Path, out: Path, init: Path, threads: int) -> None:
    flags, _ = ARMS[name]
    run = out / name
    if finished(run, EPOCHS):
        return
    cmd = [sys.executable, "-m", "train.train", "--faces", str(faces), "--out", str(run), "--init", str(init),
           "--threads", str(threads), *BUDGET, *CONTROL, *flags]
    if (run / "last.pt").exists():
        cmd.append("--resume")
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    with open(out / f"{name}.log", "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=log)


def init_scores(faces: Path, init: Path) -> dict:
    """Validation scores of the weights every arm starts from (the row each arm moved away from)."""
    from core.data import load_labels, read_split

    from . import checkpoint
    from .dataset import CropCache, validation_batches
    from .train import validate

    labels = load_labels(faces, read_split(faces, "val"))
    val = validation_batches(CropCache(faces, labels, f"val-n{len(labels.paths)}"))  # as train.train makes it
    return validate(checkpoint.load_model(init), val)


def collect(out: Path) -> dict:
    """Last-epoch validation scores of every finished arm."""
    result = {}
    for name, (flags, tests) in ARMS.items():
        history = out / name / "history.json"
        if finished(out / name, EPOCHS):
            last = json.loads(history.read_text())[-1]
            result[name] = {"flags": flags, "tests": tests, "epoch": last["epoch"], "val": last["val_nmse"]}
    return result


KINDS = ["all", "clean", "center25", "synthetic", "textured", "degraded"]
HEAD_KINDS = ["visibility_auc", "face_score_auc"]


def table(result: dict) -> str:
    """Validation NMSE (%) per kind and the heads' AUCs, one row per arm."""
    kinds = KINDS + HEAD_KINDS
    lines = ["| arm | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for name, r in result.items():
        cells = [f"{r['val'][k]:.3f}" if k in r["val"] else "–" for k in kinds]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(result: dict) -> list[str]:
    """Per arm and kind: NMSE change against the control, judged against the seed noise.

    The effect of a component is (arm without it) - (control): positive means the component lowers NMSE.
    The noise is the control's own spread over two seeds; a change inside it is not a finding.
    """
    control, twin = result.get("control"), result.get("control-seed1")
    if control is None:
        return ["No control run yet."]
    noise = {k: abs(control["val"][k] - twin["val"][k]) for k in KINDS} if twin else None
    lines = ["| arm | tests | " + " | ".join(f"Δ {k}" for k in KINDS) + " | verdict on all |",
             "|---|---|" + "---|" * len(KINDS) + "---|"]
    for name, r in result.items():
        if name.startswith("control"):
            continue
        delta = {k: r["val"][k] - control["val"][k] for k in KINDS}
        if noise is None:
            verdict = "no second seed yet"
        elif abs(delta["all"]) <= noise["all"]:
            verdict = "within seed noise"
        else:
            verdict = "component helps" if delta["all"] > 0 else "component hurts"
        lines.append(f"| {name} | {r['tests']} | " + " | ".join(f"{delta[k]:+.3f}" for k in KINDS)
                     + f" | {verdict} |")
    if noise:
        lines.append("| seed noise (control vs control-seed1) | | " + " | ".join(f"±{noise[k]:.3f}" for k in KINDS)
                     + " | |")
    return lines


def markdown(doc: dict) -> str:
    """docs/recipe.md: the setup, every arm's scores and each component's verdict."""
    budget = " ".join(doc["budget"])
    return "\n".join([
        "# Training recipe A/B (validation split)",
        "",
        "Generated by `python -m train.recipe_ab --docs docs` from the runs' histories; do not edit by hand.",
        "",
        f"Every arm starts from `{doc['init']['weights']}`, trains with `{budget}` (the same evenly spread",
        "training faces, epochs and learning-rate schedule) from the control's recipe (the defaults of the time,",
        f"`{' '.join(CONTROL)}` in today's flags) and differs from the control in one switch. Scores",
        "are the last epoch's, on the 192 validation faces: NMSE (% of the inter-pupil distance, lower is",
        "better) per kind of sample (clean; centre square; synthetic black masks; textured masks;",
        "photometrically degraded; `all` is their mean over samples), and the heads' ROC AUC (higher is",
        "better). The Liu et al. masks are kept for the test split. `init` is the starting weights, unchanged.",
        "",
        table({"init": {"val": doc["init"]["val"]}, **doc["arms"]}),
        "",
        "Δ = arm − control: positive means the NMSE rose without the component, so the component helps. A",
        "change inside the control's own two-seed spread is not counted as a finding.",
        "",
        *verdicts(doc["arms"]),
        "",
    ])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=Path, default=DEFAULT_FACES, help="face folder with splits.csv (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=Path("runs/recipe"), help="folder of the arms (default: %(default)s)")
    ap.add_argument("--init", type=Path, default=Path("weights/mobilenet_l.pt"),
                    help="the weights every arm starts from (default: %(default)s)")
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="arms to train (default: all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (default: %(default)s)")
    ap.add_argument("--report-only", action="store_true", help="train nothing; report the finished arms")
    ap.add_argument("--docs", type=Path, help="also write DOCS/recipe.md and DOCS/recipe.json")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for name in args.arms:
            train_arm(name, args.faces, args.out, args.init, args.threads)
    result = collect(args.out)
    report = args.out / "recipe.json"
    start = json.loads(report.read_text()).get("init") if report.exists() else None
    if start is None or start["weights"] != str(args.init):
        start = {"weights": str(args.init), "val": init_scores(args.faces, args.init)}
    doc = {"budget": BUDGET, "control": CONTROL, "init": start, "arms": result}
    write_json(report, doc)
    print(table({"init": {"val": start["val"]}, **result}))
    print("\n".join(verdicts(result)))
    if args.docs:
        write_json(args.docs / "recipe.json", doc)
        atomic_write_bytes(args.docs / "recipe.md", markdown(doc).encode())
        print(f"wrote {args.docs / 'recipe.md'}")


if __name__ == "__main__":
    main()
