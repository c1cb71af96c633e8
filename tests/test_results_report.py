"""scripts/results_report.py (over train.report's numbers) on two test faces, with tiny FAN*, ESR* and ablation
models made here."""
import json
import shutil

import numpy as np
import pytest

from tests.conftest import CHECKPOINT, FACES, MASKS, needs_data, needs_dlib, needs_masks

pytestmark = [needs_data, needs_masks, needs_dlib,
              pytest.mark.skipif(not CHECKPOINT.exists(), reason=f"committed checkpoint {CHECKPOINT} not found")]

KEYS = {"clean", "10-20", "30-40", "40-50", "50-60", "center25", "textured"}  # the paper's six + textured
METHODS = {"MobileNet-L", "FAN*", "ESR*", "dlib-pretrained"}
RUNS = ["full", "no-SE", "full-seed1"]  # two of train.model.ABLATIONS and a second seed of the control


def tiny_models(root):
    """Untrained FAN* and ablation checkpoints and a 2-level ESR* cascade: seconds to make, any output will do."""
    import torch

    from core.preprocess import box_in_crop
    from train import checkpoint, esr
    from train.fan import FAN, FORMAT, FANConfig

    torch.manual_seed(0)
    meta = dict(epoch=1, history=[], best_val_nmse=1.0, train_faces=16)
    checkpoint.save(root / "fan" / "best.pt", FAN(FANConfig(width=16, depth=2)), FORMAT, **meta)
    save_runs(root / "ablation", RUNS)
    save_runs(root / "paper", [""], preset="paper", val=11.0)
    rng = np.random.default_rng(0)
    x0, y0, x1, y1 = box_in_crop()
    points = rng.uniform([x0, y0], [x1, y1], (4, 68, 2))
    crops = rng.integers(0, 256, (4, 256, 256, 3), dtype=np.uint8)
    options = esr.training_options(oversampling=2, cascade_depth=2, trees=5, threads=1, verbose=False)
    esr.train(crops, points, options).save(str(root / "esr.dat"))
    return ["--fan", str(root / "fan" / "best.pt"), "--esr", str(root / "esr.dat"),
            "--ablation-dir", str(root / "ablation"), "--paper-preset-run", str(root / "paper")]


def save_runs(root, names, preset="default", val=9.0):
    """Untrained 2-epoch runs (last.pt) of ablation variants, NAME or NAME-seedN; "" saves to root itself."""
    from train import checkpoint
    from train.model import ABLATIONS, MobileNetL

    history = [{"epoch": e, "val_nmse": {"all": val - e, "clean": 5.0, "center25": 12.0}} for e in (1, 2)]
    for name in names:
        checkpoint.save(root / name / "last.pt", MobileNetL(ABLATIONS[name.split("-seed")[0] or "full"]), epoch=2,
                        history=history, best_val_nmse=1.0, train_faces=16, preset=preset, train_config={"preset": preset})


def report(*args: str) -> dict:
    from scripts.results_report import main

    return main(["--checkpoint", str(CHECKPOINT), "--faces", str(FACES), "--masks", str(MASKS), "--limit", "2", *args])


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tests check the report, not the speed: on a shared 2-core machine a second busy-waiting torch
    thread makes each batch-1 forward many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    docs = root / "docs"
    return docs, report(*tiny_models(root), "--docs", str(docs))


def test_writes_every_method_ablation_and_speed(full_run):
    docs, returned = full_run
    doc = json.loads((docs / "results.json").read_text())
    assert doc == json.loads(json.dumps(returned))
    assert set(doc) == {"methods", "ablation", "speed", "presets"}
    assert set(doc["methods"]) == METHODS
    assert list(doc["ablation"]) == ["full", "full-seed1", "no-SE"]  # variants in ABLATIONS order, seeds after
    assert [r["preset"] for r in doc["presets"].values()] == ["default", "paper"]
    assert "the **default** preset is better" in (docs / "results.md").read_text()  # 7.0 against 9.0
    for res in [*doc["methods"].values(), *doc["ablation"].values()]:
        assert res["n_faces"]["all"] == 2 and res["ms_per_face"] > 0
        assert all(set(res["nmse"][g]) == KEYS for g in ("all", "frontal", "side"))
    assert doc["ablation"]["no-SE"]["budget"] == {"epochs": 2, "evaluated_epoch": 2, "train_faces": 16,
                                                  "best_val_nmse": 1.0}
    speed = doc["speed"]["methods"]
    assert set(speed["MobileNet-L"]) == set(speed["FAN*"]) == {"pytorch-eager", "onnxruntime"}
    assert set(speed["ESR*"]) == set(speed["dlib-pretrained"]) == {"dlib"}
    assert all(t["total_s"] > 0 and t["median_ms"] > 0 for by in speed.values() for t in by.values())
    assert doc["methods"]["FAN*"]["ms_per_face"] == speed["FAN*"]["pytorch-eager"]["median_ms"]

    md = (docs / "results.md").read_text()
    for heading in ("Speed (cf. paper Table 2)", "Frontal faces (cf. paper Table 3)", "Side faces (cf. paper Table 4)",
                    "Ablation (cf. paper Figure 9)", "Cell by cell"):
        assert heading in md
    assert r"| *FAN\* (paper)* | – | *3.56* |" in md and "| ESR* | dlib |" in md
    full, repeat = (doc["ablation"][k]["nmse"]["all"]["center25"] for k in ("full", "full-seed1"))
    # untrained networks predict about one shape whatever they see: flagged, and no gain is claimed for them
    assert "| full | 2 | 2 | 16 | " in md and f" | {full:.2f} (collapsed) / {repeat:.2f} (collapsed) | " in md
    no_se = doc["ablation"]["no-SE"]["nmse"]["all"]["center25"]
    assert "| no-SE | 1 | 2 | 16 | " in md and f"{100 * (no_se - (full + repeat) / 2) / no_se:+.1f} %" in md
    assert "| 1 of 1 seeds collapsed to one fixed shape" in md and "| 2 of 2 seeds collapsed" in md
    assert "At a like budget (MobileNet-L: the ablation's `full` control, mean of 2 seeds, 2 epochs on 16 faces" in md
    for image in ("nmse_vs_occlusion.png", "training_curve.png", "examples.png"):
        assert (docs / "img" / image).stat().st_size > 0


def test_reuse_renders_without_evaluating(full_run, tmp_path, monkeypatch):
    from train import report as numbers

    docs = tmp_path / "docs"
    shutil.copytree(full_run[0], docs)
    (docs / "results.md").unlink()
    (docs / "img" / "nmse_vs_occlusion.png").unlink()
    before = (docs / "results.json").read_bytes()

    def refuse(*a, **k):
        raise AssertionError("--reuse must not evaluate")

    monkeypatch.setattr(numbers, "evaluate", refuse)
    monkeypatch.setattr(numbers, "time_interleaved", refuse)
    report("--reuse", "--docs", str(docs))
    assert (docs / "results.json").read_bytes() == before
    assert (docs / "results.md").read_text() == (full_run[0] / "results.md").read_text()
    assert (docs / "img" / "nmse_vs_occlusion.png").is_file()


def test_promote_makes_a_candidate_the_mobilenet_row_only_when_it_is_the_shipped_file(full_run, tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(full_run[0], docs)
    candidate = tmp_path / "candidate.pt"
    shutil.copy(CHECKPOINT, candidate)
    before = json.loads((docs / "results.json").read_text())["methods"]
    doc = report("--reuse", "--docs", str(docs), "--candidate", f"new={candidate}", "--promote", "new")
    row = doc["methods"]["MobileNet-L"]
    assert row["checkpoint"]["path"] == str(candidate) and "visibility" in row  # the candidate's evaluation
    assert row["ms_per_face"] == before["MobileNet-L"]["ms_per_face"]  # the row's measured speed stays
    assert {k: v for k, v in doc["methods"].items() if k != "MobileNet-L"} == {
        k: v for k, v in before.items() if k != "MobileNet-L"}
    assert json.loads((docs / "results.json").read_text())["methods"]["MobileNet-L"] == json.loads(json.dumps(row))
    other = tmp_path / "other.pt"
    other.write_bytes(candidate.read_bytes() + b"0")  # not the shipped file
    doc = json.loads((docs / "results.json").read_text())
    doc["candidates"]["new"]["checkpoint"]["path"] = str(other)
    (docs / "results.json").write_text(json.dumps(doc))
    with pytest.raises(SystemExit, match="is not the candidate's checkpoint"):
        report("--reuse", "--docs", str(docs), "--promote", "new")
    with pytest.raises(SystemExit, match="no such candidate"):
        report("--reuse", "--docs", str(docs), "--promote", "absent")


def test_missing_models_are_skipped_with_a_hint(tmp_path, capsys):
    doc = report("--checkpoint", str(tmp_path / "no.pt"), "--fan", str(tmp_path / "no_fan.pt"),
                 "--esr", str(tmp_path / "no.dat"), "--ablation-dir", str(tmp_path / "none"),
                 "--docs", str(tmp_path / "docs"))  # a later --checkpoint overrides report()'s
    out = capsys.readouterr().out
    assert set(doc["methods"]) == {"dlib-pretrained"} and doc["ablation"] == {}
    assert "python -m train.train" in out and "python -m train.fan" in out and "python -m train.esr" in out
    assert "--variant no-SE" in out
    md = (tmp_path / "docs" / "results.md").read_text()
    assert "dlib-pretrained (ours)" in md and "FAN* (ours)" not in md and "Ablation" not in md


def test_ablation_only_keeps_methods_speed_and_presets(full_run, tmp_path, monkeypatch):
    from train import report as numbers

    docs = tmp_path / "docs"
    shutil.copytree(full_run[0], docs)
    before = json.loads((docs / "results.json").read_text())
    save_runs(tmp_path / "ablation", ["no-SE", "no-SE-seed10", "no-SE-seed2", "ReLU-seed1"])

    def refuse(*a, **k):
        raise AssertionError("--ablation-only must not time the methods")

    monkeypatch.setattr(numbers, "time_interleaved", refuse)
    doc = report("--ablation-only", "--ablation-dir", str(tmp_path / "ablation"), "--docs", str(docs))
    assert {k: doc[k] for k in ("methods", "speed", "presets")} == {k: before[k] for k in ("methods", "speed", "presets")}
    # seeds in numeric order; a repeat without its seed-0 run is not a variant's row
    assert list(doc["ablation"]) == ["no-SE", "no-SE-seed2", "no-SE-seed10"]
    assert json.loads((docs / "results.json").read_text()) == json.loads(json.dumps(doc))


def test_seed_noise_verdict():
    from train.report import seeds_apart

    assert seeds_apart([17.0, 17.5], [15.9, 16.1]).startswith("**helps** (every seed apart; chance 1 in 6)")
    assert seeds_apart([15.0, 15.2], [15.9, 16.1]).startswith("**hurts**")
    assert seeds_apart([16.0, 17.5], [15.9, 16.1]) == "not told from seed noise (seeds overlap)"
    assert seeds_apart([17.0], [15.9, 16.1]) == "one seed: noise unknown"


def test_a_run_with_one_nmse_under_every_condition_is_collapsed():
    from scripts.results_report import COLS
    from train.report import collapsed

    def run(values):
        return {"nmse": {"all": dict(zip(COLS, values))}}

    assert collapsed(run([17.83, 17.83, 17.84, 17.83, 17.82, 17.83]))
    assert not collapsed(run([10.06, 11.90, 14.61, 16.26, 16.92, 15.89]))


def test_candidates_section_shows_targets_and_heads():
    from scripts.results_report import candidates_section

    conds = ["clean", "10-20", "30-40", "40-50", "50-60", "center25", "textured"]
    plain = {"nmse": {"all": {c: 5.0 for c in conds}}, "checkpoint": {"epoch": 26}}
    heads = {"nmse": {"all": {c: 4.0 for c in conds}}, "checkpoint": {"epoch": 7},
             "visibility": {c: {"auc": 0.9512, "accuracy": 0.9, "hidden_share": 0.3} for c in conds},
             "face_score_auc": {c: 0.9987 for c in conds}}
    md = candidates_section({"old": plain, "new": heads})
    assert "| old | 26 | 5.00 |" in md and "| new | 7 | 4.00 |" in md
    assert "*≤ 3.5*" in md and "*≤ 10.5*" in md  # the targets
    assert "| new | visibility AUC | 0.951 |" in md and "0.999" in md  # AUCs with three digits
    assert "| old | visibility" not in md  # no heads, no head rows


def test_a_heads_only_checkpoint_reports_the_training_of_its_landmark_network():
    from scripts.results_report import landmark_training, training_section

    def epoch(i, nmse, auc=None):
        val = {"all": nmse, **({"visibility_auc": auc, "face_score_auc": 0.998} if auc else {})}
        return {"epoch": i, "val_nmse": val, "seconds": 600.0}

    landmarks = {"history": [epoch(i, 10.0 - i) for i in range(1, 7)], "train_faces": 14027, "preset": "default",
                 "train_config": {"lr": 0.002}, "best_val_nmse": 4.0}
    heads = {"heads_only": True, "init": {**landmarks, "path": "weights/old.pt"}, "recipe": {"head_noise": 0.2},
             "history": [epoch(1, 7.79, 0.91), epoch(2, 7.79, 0.94), epoch(3, 7.79, 0.93)], "best_val_nmse": 7.79}
    assert landmark_training(heads)["history"] == landmarks["history"] and landmark_training(landmarks) is landmarks
    md = training_section(heads)
    assert "6 epochs in 60 min" in md and "best validation\nNMSE 4.000 at epoch 6" in md  # the landmark network's
    assert "--init weights/old.pt --epochs 3" in md and "AUC 0.940 (epoch 2)" in md and "head noise 0.2" in md
    assert "**Heads.**" not in training_section(landmarks)
