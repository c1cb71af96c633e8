"""docs/results.json and docs/results.md (the paper's Tables 2, 3, 4 and Figure 9 on our data): MobileNet-L, the
baselines FAN*, ESR* and dlib, and the ablation runs, evaluated and timed under one protocol by train.report;
this script adds the tables, plots and prose.

    python scripts/results_report.py [--checkpoint weights/mobilenet_l.pt] [--esr runs/esr/esr.dat] [--fan runs/fan/best.pt]
        [--ablation-dir runs/ablation] [--faces ../shared/data/faces] [--masks ../shared/data/masks/nvidia_irregular_test]
        [--docs docs] [--limit N] [--reuse | --ablation-only]

A method or ablation run whose model file is missing is skipped with a line saying how to make it.
--reuse re-renders results.md and the plots from DOCS/results.json without evaluating anything.
--ablation-only evaluates the ablation runs alone and keeps the methods, speed and preset A/B of
DOCS/results.json: for new ablation runs (more seeds, another budget) without retraining FAN* and ESR*.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from core.data import DEFAULT_FACES, DEFAULT_MASKS
from core.files import atomic_write_bytes, sha256_file, write_json
from core.occlusion import CONDITIONS, EVAL_CONDITIONS, PAPER_CONDITIONS
from core.pose import SIDE_YAW_DEG
from core.preprocess import INPUT_SIZE, to_input
from core.samples import occluded_crops
from runtime.backends import landmarks_output
from runtime.onnxruntime_backend import OnnxRuntimeBackend
from train import checkpoint
from train.evaluate import (PAPER_FIG9, PAPER_METHODS, PAPER_TOTAL_S, Predictor, as_outputs, load_faces,
                            torch_predictor)
from train.report import (FACE_AUC_TARGET, TARGETS, VISIBILITY_AUC_TARGET, by_variant, collapsed, evaluate_ablation,
                          evaluate_candidates, lost_cells, mean_nmse, run_evaluations, seeds_apart)

COLS = list(CONDITIONS)
PAPER_COLS = list(PAPER_CONDITIONS)
BIN_X = {"clean": 0, "10-20": 15, "30-40": 35, "40-50": 45, "50-60": 55}  # bin centres, % coverage
CENTRE_X = 25  # the centre square covers 25 %
def ort_predictor(model: torch.nn.Module, path: Path) -> Predictor:
    """``model`` exported to ONNX at ``path`` and run by ONNX Runtime on the CPU with default options."""
    from export.export_onnx import export_onnx

    export_onnx(model, path)  # opset 17, TorchScript exporter (dynamo=False), simplified
    backend = OnnxRuntimeBackend(path, providers=["CPUExecutionProvider"])
    return lambda crops: landmarks_output(backend.run(to_input(crops)))


# ---- plots -------------------------------------------------------------------------------------------------------

VAL_SCORES = ("all", "visibility_auc", "face_score_auc")  # entries of a validation record that are not a condition


def curve(history: list[dict], loss: str, path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax[0].set(xlabel="epoch", ylabel=f"training loss ({loss}, px at 256)", title="training loss")
    for key in (k for k in history[-1]["val_nmse"] if k not in VAL_SCORES):
        ax[1].plot(epochs, [h["val_nmse"].get(key) for h in history], marker="o", label=key)
    ax[1].set(xlabel="epoch", ylabel="NMSE (%)", title="validation NMSE")
    ax[1].legend()
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def occlusion_plot(methods: dict[str, dict], path: Path) -> None:
    """NMSE against occlusion bin, frontal and side: ours solid, the paper's dashed, the centre square a lone marker."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, group in zip(axes, ("frontal", "side")):
        for i, (name, res) in enumerate(methods.items()):
            colour, row = f"C{i}", res["nmse"][group]
            if res["n_faces"][group] == 0:
                continue
            ax.plot(list(BIN_X.values()), [row[c] for c in BIN_X], "-o", color=colour, label=f"{name} (ours)")
            ax.plot(CENTRE_X, row["center25"], "s", color=colour, markersize=8, fillstyle="none")
            if name in PAPER_METHODS:
                paper = PAPER_METHODS[name][group]
                ax.plot([BIN_X[c] for c in PAPER_COLS[:-1]], [paper[c] for c in PAPER_COLS[:-1]], "--", color=colour,
                        alpha=0.6, label=f"{name} (paper)")
                ax.plot(CENTRE_X, paper["center25"], "x", color=colour, markersize=8, alpha=0.6)
        ax.set(title=f"{group} faces", xlabel="Liu et al. mask coverage bin (%); square: centre 25 % (x: paper)",
               xticks=list(BIN_X.values()), xticklabels=list(BIN_X))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("NMSE (%)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def examples(model, faces_dir: Path, masks_dir: Path, path: Path, n: int = 4) -> None:
    """Rows: test faces (frontal and side); columns: conditions. Green = prediction, red = teacher."""
    from core.preprocess import image_to_target

    predict = torch_predictor(model)
    faces = load_faces(faces_dir, "test")
    side = [f for f in faces if f.yaw >= SIDE_YAW_DEG][: n // 2]
    chosen = [f for f in faces if f.yaw < SIDE_YAW_DEG][: n - len(side)] + side
    rows = []
    for face in chosen:
        m, by_cond = occluded_crops(faces_dir, face, masks_dir, CONDITIONS, 0)
        gt = image_to_target(face.landmarks, m) * INPUT_SIZE
        crops = np.stack([by_cond[cond][2] for cond in COLS])
        preds = as_outputs(predict(crops))["landmarks"] * INPUT_SIZE
        tiles = []
        for cond, crop, pred in zip(COLS, crops.copy(), preds):
            for (x, y) in gt:
                cv2.circle(crop, (int(round(x)), int(round(y))), 2, (0, 0, 255), -1)
            for (x, y) in pred:
                cv2.circle(crop, (int(round(x)), int(round(y))), 2, (0, 255, 0), -1)
            cv2.putText(crop, cond, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2)
            tiles.append(crop)
        rows.append(np.hstack(tiles))
    cv2.imwrite(str(path), np.vstack(rows))


# ---- markdown ----------------------------------------------------------------------------------------------------

def fmt(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def nmse_table(methods: dict[str, dict], group: str) -> str:
    """Our rows, each followed by the paper's row for the same method where the paper has one."""
    lines = ["| method | " + " | ".join(COLS) + " |", "|---" * (len(COLS) + 1) + "|"]
    for name, res in methods.items():
        lines.append(f"| {name} (ours) | " + " | ".join(fmt(res["nmse"][group][c]) for c in COLS) + " |")
        if group in ("frontal", "side") and name in PAPER_METHODS:
            paper = PAPER_METHODS[name][group]
            escaped = name.replace("*", "\\*")  # inside italics a bare * would end them
            lines.append(f"| *{escaped} (paper)* | – | " + " | ".join(f"*{paper[c]:.2f}*" for c in PAPER_COLS) + " |")
    return "\n".join(lines)


def cells_line(methods: dict[str, dict]) -> str:
    paper_cells, paper_lost = lost_cells(PAPER_METHODS)
    text = (f"**Cell by cell** (Tables 3 and 4, MobileNet-L against FAN* and ESR*). The paper's MobileNet-L loses "
            f"{len(paper_lost)} of {paper_cells} cells: {', '.join(paper_lost)}.")
    if "MobileNet-L" not in methods or not {"FAN*", "ESR*"} & set(methods):
        return text + " Ours: not compared (MobileNet-L, FAN* or ESR* was not evaluated)."
    cells, lost = lost_cells({m: r["nmse"] for m, r in methods.items()})
    rivals = " and ".join(m for m in ("FAN*", "ESR*") if m in methods)
    return text + f" Ours {verdict(cells, lost)} against {rivals}."


def verdict(cells: int, lost: list[str]) -> str:
    return f"wins all {cells} cells" if not lost else f"wins {cells - len(lost)} of {cells} and loses {', '.join(lost)}"


def equal_budget_line(methods: dict[str, dict], ablation: dict[str, dict]) -> str:
    """The same count for FAN* against MobileNet-L trained on a budget like FAN*'s: the ablation's `full` control."""
    control = by_variant(ablation).get("full")
    if "FAN*" not in methods or not control:
        return ""
    cells, lost = lost_cells({"MobileNet-L": mean_nmse(control), "FAN*": methods["FAN*"]["nmse"]})
    b, f = control[0]["budget"], methods["FAN*"]["budget"]
    text = (f"At a like budget (MobileNet-L: the ablation's `full` control, mean of {len(control)} seeds, "
            f"{b['epochs']} epochs on {b['train_faces']} faces; FAN\\*: {f['epochs']} epochs on {f['train_faces']} "
            f"faces), MobileNet-L {verdict(cells, lost)} against FAN\\*.")
    if 2 * len(lost) > cells:
        text += (" Why, we think: on little data and few steps a heatmap network learns faster than direct "
                 "regression. Each of its 68 heatmaps is a dense, local target whose gradient reaches every pixel "
                 "near the landmark, while MobileNet-L must learn from 136 numbers per face how pooled features map "
                 "to coordinates. So the paper's accuracy edge over FAN shows here only with MobileNet-L's full "
                 "budget, which FAN\\* (about 3x the cost of a step) has not had; it is not shown at a like budget.")
    return text + "\n"


def speed_table(speed: dict) -> str:
    ref = speed["methods"].get("MobileNet-L", {})
    lines = ["| method | backend | ms per face (median) | total s | ÷ MobileNet-L | paper total s "
             "| paper ÷ MobileNet-L |", "|---" * 7 + "|"]
    for name, by_backend in speed["methods"].items():
        for i, (backend, t) in enumerate(by_backend.items()):
            base = ref.get(backend, ref.get("pytorch-eager"))  # same backend; dlib methods against PyTorch eager
            ratio = f"{t['total_s'] / base['total_s']:.2f}x" if base else "–"
            paper = PAPER_TOTAL_S.get(name) if i == 0 else None  # the paper timed one implementation per method
            paper_ratio = f"{paper / PAPER_TOTAL_S['MobileNet-L']:.2f}x" if paper else "–"
            lines.append(f"| {name} | {backend} | {t['median_ms']:.2f} | {t['total_s']:.2f} | {ratio} "
                         f"| {fmt(paper)} | {paper_ratio} |")
    return "\n".join(lines)


def ablation_table(ablation: dict[str, dict]) -> str:
    groups = by_variant(ablation)
    control = groups.get("full")
    if control:
        full_c25 = mean_nmse(control)["all"]["center25"]
        control_c25 = [r["nmse"]["all"]["center25"] for r in control]
    lines = ["| variant | seeds | epochs | train faces | " + " | ".join(COLS) + " | centre25 per seed "
             "| gain of the component at centre25 (ours) | beyond seed noise? | paper, Fig. 9 |",
             "|---" * (len(COLS) + 8) + "|"]
    for variant, runs in groups.items():
        row, b = mean_nmse(runs)["all"], runs[0]["budget"]
        per_seed = [r["nmse"]["all"]["center25"] for r in runs]
        dead = [collapsed(r) for r in runs]
        component, paper_gain = PAPER_FIG9.get(variant, ("", None))
        gain = verdict_cell = "–"
        if control and variant != "full":  # as Fig. 9: how much lower NMSE gets when the component is added
            gain = f"{component}: {100 * (row['center25'] - full_c25) / row['center25']:+.1f} %"
            verdict_cell = seeds_apart(per_seed, control_c25)
        if any(dead):
            verdict_cell = (f"{sum(dead)} of {len(runs)} seeds collapsed to one fixed shape: the variant does not "
                            "train reliably with this recipe, and the gain is not an accuracy measurement")
        lines.append(f"| {variant} | {len(runs)} | {b['epochs']} | {b['train_faces']} | "
                     + " | ".join(fmt(row[c]) for c in COLS)
                     + f" | {' / '.join(fmt(v) + (' (collapsed)' if d else '') for v, d in zip(per_seed, dead))} "
                     + f"| {gain} | {verdict_cell} | {'–' if paper_gain is None else f'{component}: +{paper_gain} %'} |")
    return "\n".join(lines)


def dlib_line(ours: dict, dlib: dict) -> str:
    a, b = ours["nmse"]["all"], dlib["nmse"]["all"]
    return ("Against dlib's pretrained predictor under the same protocol (all faces), MobileNet-L's NMSE is lower by "
            + ", ".join(f"{b[c] / a[c]:.1f}x at {c}" for c in PAPER_COLS)
            + f". On clean faces dlib wins ({b['clean']:.2f} vs {a['clean']:.2f}): it is the teacher, run here on the "
              "resampled crop.")


def paper_gap(ours: dict) -> str:
    lines = ["| faces | " + " | ".join(PAPER_COLS) + " |", "|---" * len(COLS) + "|"]
    for group in ("frontal", "side"):
        lines.append(f"| {group} | " + " | ".join(f"{ours['nmse'][group][c] - PAPER_METHODS['MobileNet-L'][group][c]:+.2f}"
                                                for c in PAPER_COLS) + " |")
    return "\n".join(lines)


def landmark_training(state: dict) -> dict:
    """The training record of a checkpoint's landmark network: its own, or, for heads trained on a frozen
    network, that of the checkpoint it started from."""
    return state["init"] if state.get("heads_only") else state


def heads_paragraph(state: dict) -> str:
    """How the heads of a heads-only checkpoint were trained."""
    history = state["history"]
    best = max(history, key=lambda h: h["val_nmse"]["visibility_auc"])
    return (f"\n**Heads.** The visibility and face-score heads were trained afterwards on this frozen network "
            f"(`python -m train.train --heads-only --init {state['init']['path']} --epochs {len(history)}`, head noise "
            f"{state['recipe'].get('head_noise', 0.0)}): {len(history)} epochs in "
            f"{sum(h['seconds'] for h in history) / 60:.0f} min, best validation visibility AUC "
            f"{best['val_nmse']['visibility_auc']:.3f} (epoch {best['epoch']}), face-score AUC "
            f"{best['val_nmse']['face_score_auc']:.3f}; every landmark weight and batch-norm statistic is the "
            f"network's above, so its landmarks are too.\n")


def training_section(state: dict) -> str:
    heads = heads_paragraph(state) if state.get("heads_only") else ""
    state = landmark_training(state)
    history = state["history"]
    best = min(history, key=lambda h: h["val_nmse"]["all"])
    last4 = [h["val_nmse"]["all"] for h in history[-4:]]
    before = min((h["val_nmse"]["all"] for h in history[:-4]), default=0.0)
    if len(history) <= 4:
        trend = "Too few epochs to tell whether validation NMSE has stopped improving."
    elif best["epoch"] != history[-1]["epoch"]:
        trend = "The best epoch was not the last: validation NMSE had stopped improving."
    else:
        gain = 100 * (before - best["val_nmse"]["all"]) / before
        trend = (f"The last epoch was the best; over the last four epochs validation NMSE moved within "
                 f"{min(last4):.2f}-{max(last4):.2f}, {gain:.1f} % below the best before them: "
                 + ("the curve has flattened, though a longer schedule may still gain a little." if gain < 5 else
                    "still improving, so these numbers are a floor for this recipe, not its limit."))
    return f"""## Training (MobileNet-L)

{state['train_faces']} training faces (train split, teacher-labelled), preset `{state['preset']}`
({json.dumps(state['train_config'])}), {len(history)} epochs in {sum(h['seconds'] for h in history) / 60:.0f} min of wall time (partly shared with other jobs) on
this 2-core CPU, carried across sessions with `--resume` (the README tells this network's runs); best validation
NMSE {best['val_nmse']['all']:.3f} at epoch {best['epoch']} (validation: the teacher-labelled val split under the
conditions {', '.join(k for k in best['val_nmse'] if k not in VAL_SCORES)}; the Liu et al. masks are kept for the test).
{trend}
{heads}
![training curve](img/training_curve.png)
"""


def preset_section(presets: dict) -> str:
    d, p = presets["default"], presets["paper"]
    rows = [f"| {e + 1} | " + " | ".join(f"{r['val_nmse'][e][k]:.2f}" for r in (d, p) for k in ("all", "clean", "center25"))
            + " |" for e in range(min(d["epochs"], p["epochs"]))]
    best = {name: min(v["all"] for v in r["val_nmse"]) for name, r in presets.items()}
    winner = min(best, key=best.get)
    return f"""## Training preset: ours against the paper's

Same budget for both ({d['epochs']} epochs on {d['train_faces']} training faces, validation NMSE on the val split):
our default (`{json.dumps(d['train_config'])}`) against the paper's (`{json.dumps(p['train_config'])}`).

| epoch | default: all | clean | centre | paper: all | clean | centre |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Best validation NMSE: default {best['default']:.2f}, paper {best['paper']:.2f}: the **{winner}** preset is better at
this budget{", which is why it is the default" if winner == "default" else "; the default should be revisited"}.
One seed each and a short budget: a small-budget A/B, not a full-length one.
"""


def undertrained_note(ablation: dict[str, dict], landmarks: dict | None) -> str:
    """Say so when the control run is far from the committed model (``landmarks``: its landmark network's
    training record): then no variant has learned enough to rank."""
    full = ablation.get("full", {}).get("budget")  # seed 0's; every seed of a variant has the same budget
    if landmarks is None or not full or full["best_val_nmse"] <= 2 * landmarks["best_val_nmse"]:
        return ""
    return (f"\n**At this budget the ablation measures nothing yet.** The `full` control reached validation NMSE "
            f"{full['best_val_nmse']:.1f} against the committed model's {landmarks['best_val_nmse']:.2f}: the runs still "
            "predict close to an average face (their NMSE hardly changes with occlusion, and a run whose NMSE is the "
            "same under every condition predicts one fixed shape), so the signs of the gains above are noise. "
            "Train every variant for the same longer budget before reading Figure 9 off this table.\n")


def fan_note(budget: dict, mobilenet_val: float, control: dict | None) -> str:
    text = (f"**Read FAN\\* with its budget:** {budget['epochs']} epochs on {budget['train_faces']} training faces, "
            f"best validation NMSE {budget['best_val_nmse']:.1f} (the committed MobileNet-L's: {mobilenet_val:.2f}).")
    if control:  # the ablation's control is MobileNet-L at a budget like FAN*'s: the like-for-like comparison
        text += (f" MobileNet-L at a similar budget is the ablation's `full` control below ({control['epochs']} epochs "
                 f"on {control['train_faces']} faces, best validation NMSE {control['best_val_nmse']:.1f}).")
    if budget["best_val_nmse"] > 3 * mobilenet_val:
        text += (" A heatmap network this short of training has not learned to localise yet: its rows say nothing "
                 "about the architecture, only that it needs a far longer run.")
    return text + "\n"


def candidates_section(candidates: dict) -> str:
    """The previous model against the model with heads: NMSE with the textured condition, and the heads."""
    conds = list(EVAL_CONDITIONS)
    lines = ["## The model with visibility and face-score heads", "",
             "Evaluated by `python scripts/results_report.py --reuse --candidate NAME=CHECKPOINT` on all test faces,",
             "with the `textured` condition (the 30-40 % masks filled with texture); rows named mirror-averaged were",
             "evaluated with `--mirror` (core/mirror.py: two passes, as LandmarkDetector answers still images), the",
             "others with one pass, the paper's protocol. Targets of the model issue in the last row.", "",
             "| model | epoch | " + " | ".join(conds) + " |", "|---" * (len(conds) + 2) + "|"]
    for name, res in candidates.items():
        row = res["nmse"]["all"]
        lines.append(f"| {name} | {res['checkpoint']['epoch']} | " + " | ".join(fmt(row.get(c)) for c in conds) + " |")
    lines.append("| *target* | | " + " | ".join(f"*≤ {TARGETS[c]}*" if c in TARGETS else "" for c in conds) + " |")
    heads = {n: r for n, r in candidates.items() if "visibility" in r}
    if heads:
        lines += ["", f"Visibility (ROC AUC / accuracy at 0.5, share of hidden points; target AUC ≥ "
                      f"{VISIBILITY_AUC_TARGET} under the Liu masks) and face score (ROC AUC against one negative "
                      f"per face; target ≥ {FACE_AUC_TARGET}):", "",
                  "| model | | " + " | ".join(conds) + " |", "|---" * (len(conds) + 2) + "|"]
        for name, res in heads.items():
            vis = res["visibility"]
            lines.append(f"| {name} | visibility AUC | " + " | ".join(fmt(vis[c]["auc"], 3) for c in conds) + " |")
            lines.append("| | accuracy | " + " | ".join(fmt(vis[c]["accuracy"], 3) for c in conds) + " |")
            lines.append("| | hidden share | " + " | ".join(fmt(vis[c]["hidden_share"]) for c in conds) + " |")
            lines.append("| | face score AUC | " + " | ".join(fmt(res["face_score_auc"][c], 3) for c in conds) + " |")
    return "\n".join(lines) + "\n"


def promoted(doc: dict, name: str, shipped: Path) -> dict:
    """The MobileNet-L row made from candidate ``name``: its test results (the shipped file must be the
    candidate's, by sha256) and the speed of the row it replaces, which holds for a checkpoint of the same
    architecture only: re-time (a run without --reuse) after changing the network."""
    cand = doc.get("candidates", {}).get(name)
    if cand is None:
        raise SystemExit(f"--promote {name!r}: no such candidate; evaluate it with --candidate {name}=CHECKPOINT")
    path = Path(cand["checkpoint"]["path"])
    if not path.is_file() or not shipped.is_file() or sha256_file(path) != sha256_file(shipped):
        raise SystemExit(f"--promote {name!r}: {shipped} is not the candidate's checkpoint {path}; copy it there first")
    before = doc["methods"].get("MobileNet-L", {})
    return {**cand, "ms_per_face": before.get("ms_per_face")}


def render(doc: dict, state: dict | None, args: argparse.Namespace) -> str:
    landmarks = landmark_training(state) if state else None  # the record of its landmark network
    methods, ablation, speed = doc["methods"], doc["ablation"], doc["speed"]
    if not methods:
        return "# Results\n\nNo method was evaluated: see the lines `python scripts/results_report.py` printed.\n"
    n = next(iter(methods.values()))["n_faces"]
    out = [f"""# Results: MobileNet-L, the baselines FAN* and ESR*, and the ablation

Generated by `python scripts/results_report.py` (numbers in `results.json`). NMSE in percent of the
inter-pupil distance (lower is better), {n['all']} teacher-labelled test faces of `splits.csv`
({n['frontal']} frontal, {n['side']} side: |yaw| >= {SIDE_YAW_DEG:g} deg estimated from the ground truth with
`cv2.solvePnP`). Every method runs under the same protocol (`train.evaluate.evaluate`): each face is
cropped from its dlib box found on the clean image; the mask is applied to the 256x256 crop (one Liu et
al. test mask per coverage bin, chosen with seed 0, coverage measured at 256 px; the centre mask is a
centred square of half the side). Ground truth is dlib's 68-point predictor on the clean image, as in
the paper.

Methods: **MobileNet-L** (`{args.checkpoint}`); **FAN\\*** (`train/fan.py`: a stacked-hourglass heatmap
network after Bulat & Tzimiropoulos, trained on the same data and occlusion, shrunk from FAN's 4 stacks of
width 256 to 2 stacks of width 64 so that a training step costs about 3x MobileNet-L's on this CPU
(0.80 M parameters, 1.09 G multiply-adds); FAN's own 64x64 heatmaps, decoded to sub-pixel positions
with DARK so the 4 px cells do not quantise the error); **ESR\\*** (`train/esr.py`:
dlib's regression-tree cascade, the successor of Cao et al.'s ESR, trained on occluded training crops);
**dlib-pretrained** (the teacher itself on the occluded crop). Paper rows are in *italics*: CelebA-HQ,
29.5 k training images, the paper's own re-implementations, so single cells are not strictly comparable.
"""]
    missing = [m for m in ("MobileNet-L", "FAN*", "ESR*", "dlib-pretrained") if m not in methods]
    if missing:
        out.append(f"Not evaluated in this run, so absent from the tables: {', '.join(missing)}.\n".replace("*", "\\*"))
    if speed:
        fan_budget = methods.get("FAN*", {}).get("budget")
        out.append(f"""## Speed (cf. paper Table 2)

Batch 1 on this machine ({speed['machine']['cpu']}, {speed['machine']['usable_cpus']} usable cores, load
{speed['machine']['load_avg_1m']} at the start), each method timed end to end (uint8 crop in, landmarks
out) on the {speed['faces']} clean crops of the split, as many timed calls as faces; all methods in one run, interleaved
in blocks of 10 calls so that other load on the machine slows them alike. ONNX Runtime runs the networks
exported at opset 17 with default session options. "total s" is the whole split; the paper's is its own
test set on its own hardware, so compare the ratios, not the seconds.

{speed_table(speed)}
""" + (f"\nFAN* here is the checkpoint of epoch {fan_budget['evaluated_epoch']} of {fan_budget['epochs']} on "
       f"{fan_budget['train_faces']} training faces.\n" if fan_budget else ""))
    if methods.get("FAN*", {}).get("budget") and state is not None:
        out.append(fan_note(methods["FAN*"]["budget"], landmarks["best_val_nmse"], ablation.get("full", {}).get("budget")))
    out.append(f"""## Frontal faces (cf. paper Table 3)

{nmse_table(methods, "frontal")}

## Side faces (cf. paper Table 4)

{nmse_table(methods, "side")}

## All faces

{nmse_table(methods, "all")}

![NMSE against occlusion](img/nmse_vs_occlusion.png)

## Where we stand

{cells_line(methods)}

{equal_budget_line(methods, ablation)}""")
    if "MobileNet-L" in methods and "dlib-pretrained" in methods:
        out.append(dlib_line(methods["MobileNet-L"], methods["dlib-pretrained"]) + "\n")
    if "MobileNet-L" in methods:
        out.append(f"""Against the paper's MobileNet-L (ours minus paper, NMSE points; negative = ours better):

{paper_gap(methods["MobileNet-L"])}
""")
    if ablation:
        out.append(f"""## Ablation (cf. paper Figure 9)

Each variant drops one component of MobileNet-L (`train.model.ABLATIONS`); `full` is the control
trained with the same reduced budget, so compare each variant with `full`, not with the committed model.
NMSE on all {next(iter(ablation.values()))['n_faces']['all']} test faces, each run evaluated at the end of its
budget (`last.pt`), each row the mean over the variant's seeds (`--seed 0, 1, ...`: the same data, another
initialisation and batch order). The gain of a component is (variant − full) / variant at centre25, as
Figure 9 reports it (positive: the component helps); it counts as beyond seed noise only when every seed of
the variant lands on the same side of every seed of the control.

{ablation_table(ablation)}

These are **reduced-budget runs** (epochs and training faces above, against the committed model's
{len(landmarks['history']) if landmarks else '?'} epochs on {landmarks['train_faces'] if landmarks else '?'} faces); gains may change
with the full budget.
{undertrained_note(ablation, landmarks)}""")
    if doc.get("candidates"):
        out.append(candidates_section(doc["candidates"]))
    if doc.get("presets"):
        out.append(preset_section(doc["presets"]))
    if state is not None:
        out.append(training_section(state))
        out.append("""## Examples

Green: prediction, red: teacher landmarks. Columns: clean, the four Liu et al. bins, the centre square.

![examples](img/examples.png)
""")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=Path("weights/mobilenet_l.pt"), help="MobileNet-L (default: %(default)s)")
    ap.add_argument("--esr", type=Path, default=Path("runs/esr/esr.dat"), help="ESR* model (default: %(default)s)")
    ap.add_argument("--fan", type=Path, default=Path("runs/fan/best.pt"), help="FAN* checkpoint (default: %(default)s)")
    ap.add_argument("--ablation-dir", type=Path, default=Path("runs/ablation"),
                    help="one run folder per train.model.ABLATIONS name (NAME-seedN for repeats), each with last.pt "
                         "(default: %(default)s)")
    ap.add_argument("--paper-preset-run", type=Path, default=Path("runs/preset_paper"),
                    help="a `--preset paper` run with the ablation's budget, for the preset A/B (default: %(default)s)")
    ap.add_argument("--faces", type=Path, default=DEFAULT_FACES, help="(default: %(default)s)")
    ap.add_argument("--masks", type=Path, default=DEFAULT_MASKS, help="Liu et al. test masks (default: %(default)s)")
    ap.add_argument("--docs", type=Path, default=Path("docs"), help="where results.md/.json go (default: %(default)s)")
    ap.add_argument("--limit", type=int, help="evaluate only the first N test faces")
    keep = ap.add_mutually_exclusive_group()
    keep.add_argument("--reuse", action="store_true", help="re-render from DOCS/results.json, no evaluation")
    keep.add_argument("--ablation-only", action="store_true",
                      help="evaluate only the ablation runs; keep methods, speed and presets of DOCS/results.json")
    ap.add_argument("--candidate", action="append", default=[], metavar="NAME=CHECKPOINT",
                    help="also evaluate this checkpoint (repeatable), e.g. the model in training against the "
                         "committed one; kept in DOCS/results.json under candidates")
    ap.add_argument("--mirror", action="store_true",
                    help="evaluate this call's candidates with mirror averaging (core.mirror), as LandmarkDetector "
                         "runs still images; without it, the paper protocol (one pass)")
    ap.add_argument("--promote", metavar="NAME",
                    help="with --reuse: the candidate NAME (evaluated now or before) becomes the MobileNet-L row, "
                         "once --checkpoint holds the same file; the other methods, the ablation and the speed "
                         "(the same network) are kept")
    args = ap.parse_args(argv)
    if args.promote and not args.reuse:
        ap.error("--promote re-renders the tables: use it with --reuse")
    img = args.docs / "img"
    img.mkdir(parents=True, exist_ok=True)
    previous = args.docs / "results.json"
    if (args.reuse or args.ablation_only) and not previous.is_file():
        raise SystemExit(f"{previous}: not found; run without --reuse/--ablation-only first")

    if args.reuse:
        doc = json.loads(previous.read_text())
        if args.candidate:
            doc["candidates"] = {**doc.get("candidates", {}), **evaluate_candidates(args)}
        if args.promote:
            doc["methods"]["MobileNet-L"] = promoted(doc, args.promote, args.checkpoint)
        if args.candidate or args.promote:
            write_json(previous, doc)
    else:
        if not args.masks.is_dir():
            raise SystemExit(f"{args.masks}: Liu et al. mask folder not found (--masks)")
        if args.ablation_only:
            doc = json.loads(previous.read_text()) | {"ablation": evaluate_ablation(args)}
        else:
            with tempfile.TemporaryDirectory() as workdir:
                doc = run_evaluations(args, Path(workdir), ort_predictor)
        write_json(args.docs / "results.json", doc)
        print(f"wrote {args.docs / 'results.json'}")

    state = None
    if args.checkpoint.is_file():  # the training curve and examples are MobileNet-L's
        state = checkpoint.load(args.checkpoint)
        landmarks = landmark_training(state)
        curve(landmarks["history"], landmarks["train_config"].get("loss", "?"), img / "training_curve.png")
        examples(checkpoint.load_model(args.checkpoint), args.faces, args.masks, img / "examples.png")
    if doc["methods"]:
        occlusion_plot(doc["methods"], img / "nmse_vs_occlusion.png")
    atomic_write_bytes(args.docs / "results.md", render(doc, state, args).encode())
    print(f"wrote {args.docs / 'results.md'}")
    return doc


if __name__ == "__main__":
    main()
