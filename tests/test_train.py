import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, needs_dlib


@needs_dlib
def test_short_training_run_loss_falls_and_resumes(small_faces, tmp_cache, tmp_path):
    """The shipped model (landmarks, visibility and face-score heads) with the shipped recipe."""
    from train import checkpoint
    from train.train import main

    out = tmp_path / "run"
    args = ["--faces", str(small_faces), "--out", str(out), "--batch", "8", "--seed", "1"]
    result = main(args + ["--epochs", "4"])
    losses = [h["train_loss"] for h in result["history"]]
    assert len(losses) == 4
    # the Wing loss is log-shaped, so it falls less in ratio than L1 did (0.70 of the first epoch's here)
    assert losses[-1] < 0.8 * losses[0], losses
    val = result["history"][-1]["val_nmse"]
    assert {"visibility_auc", "face_score_auc"} <= set(val)
    for name in ("best.pt", "last.pt"):
        state = torch.load(out / name, weights_only=True)  # the format later stages rely on
        assert state["config"]["input_size"] == 256 and state["preprocess"]["version"]
        assert state["schema"]["num_landmarks"] == 68
    model = checkpoint.load_model(out / "best.pt")
    assert model.fc.out_features == 136 and model.config.heads and state["recipe"]["labels"] == "average"

    # a finished run is not overwritten by a forgotten --resume, and a resume with nothing left says so
    with pytest.raises(SystemExit, match="holds a run already .*--resume carries it on, --force starts over"):
        main(args + ["--epochs", "4"])
    with pytest.raises(SystemExit, match="at epoch 4 of --epochs 4: nothing left to do"):
        main(args + ["--epochs", "4", "--resume"])
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 4  # untouched
    resumed = main(args + ["--epochs", "5", "--resume"])
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4, 5]
    assert resumed["history"][:4] == result["history"]
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["history"] == resumed["history"]  # the whole run, though written at its own epoch
    assert best["epoch"] == min(resumed["history"], key=lambda h: h["val_nmse"]["all"])["epoch"]


@needs_dlib
def test_checkpoint_errors(tmp_path):
    from train import checkpoint

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        checkpoint.load(bad)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        checkpoint.load(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"model": {}}, other)
    with pytest.raises(ValueError, match="not a mobilenet_l-checkpoint-v1 checkpoint"):
        checkpoint.load(other)


@needs_dlib
@pytest.mark.slow
def test_distributed_two_processes_on_cpu(small_faces, tmp_cache, tmp_path):
    from train.annotate import annotate

    annotate(small_faces, workers=1)  # label once, before the two ranks start
    out = tmp_path / "ddp"
    env = dict(os.environ, LANDMARK_CACHE=str(tmp_cache), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "train.train",
           "--faces", str(small_faces), "--out", str(out), "--epochs", "2", "--batch", "8"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and state["epoch"] == 2
    # each rank saw half of the 48 training faces: 3 steps of 8 per epoch
    assert len(json.loads((out / "history.json").read_text())) == 2


@needs_dlib
def test_heads_only_training_keeps_the_landmark_network_exactly(small_faces, tmp_cache, tmp_path):
    from train import checkpoint
    from train.model import HEAD_MODULES
    from train.train import main

    start = tmp_path / "start"
    main(["--faces", str(small_faces), "--out", str(start), "--batch", "8", "--epochs", "1", "--limit", "16"])
    out = tmp_path / "heads"
    result = main(["--faces", str(small_faces), "--out", str(out), "--batch", "8", "--epochs", "2", "--seed", "3",
                   "--heads-only", "--init", str(start / "last.pt")])
    before = checkpoint.load(start / "last.pt")["model"]
    after = checkpoint.load(out / "last.pt")["model"]
    heads = [k for k in after if k.split(".")[0] in HEAD_MODULES]
    assert heads and all(not torch.equal(before[k], after[k]) for k in heads if k.endswith("weight"))
    # every other tensor, batch-norm statistics included, is the starting network's
    assert all(torch.equal(before[k], after[k]) for k in after if k not in heads)
    vals = [h["val_nmse"]["all"] for h in result["history"]]
    assert vals[0] == vals[1]  # the landmarks cannot change
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["heads_only"] is True
    # the starting network's own training record travels with it
    started = checkpoint.load(start / "last.pt")
    assert saved["init"]["history"] == started["history"] and saved["init"]["path"] == str(start / "last.pt")
    assert len(saved["init"]["sha256"]) == 64 and saved["history"] != started["history"]
