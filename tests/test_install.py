"""The runtime installs and runs without torch: a wheel of this project, installed without extras into fresh
virtual environments (this machine's Python and Python 3.8, JetPack 5's), runs predict and verify.

Slow (a wheel build and two environments from PyPI); skipped where there is no network or no Python 3.8.
"""
import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FACES, MASKS, ROOT, needs_data, needs_dlib, needs_masks

pytestmark = [pytest.mark.slow, needs_data, needs_masks, needs_dlib]


def python38() -> str | None:
    """A Python 3.8 that runs: pyenv's own build first (its shim may point elsewhere), else python3.8 on PATH."""
    candidates = sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.8*/bin/python"))) + [shutil.which("python3.8")]
    for python in filter(None, candidates):
        probe = subprocess.run([python, "-c", "import sys; assert sys.version_info[:2] == (3, 8)"],
                               capture_output=True, timeout=60)
        if probe.returncode == 0:
            return python
    return None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"could not build the wheel (no network for the build backend?): {proc.stderr[-500:]}")
    return next(out.glob("*.whl"))


@pytest.fixture(scope="module")
def model_and_golden(reference_model, onnx_model, tmp_path_factory):
    """The exported model and a golden set of 3 test faces, made here where torch is."""
    from export.export_onnx import build_golden

    golden, _ = build_golden(reference_model, FACES, MASKS, count=3, seed=0, meta={})
    path = tmp_path_factory.mktemp("golden") / "g.golden.npz"
    golden.save(path)
    return onnx_model, path


# Neither the checkout nor a PYTHONPATH may lend the environments the project's packages (or make pip
# think the project is installed already).
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def runtime_env(python: str, wheel: Path, where: Path) -> Path:
    """A fresh virtual environment with the wheel installed, no extras; its bin folder."""
    subprocess.run([python, "-m", "venv", str(where)], check=True, timeout=300, env=CLEAN_ENV, cwd=where.parent)
    pip = [str(where / "bin" / "python"), "-m", "pip", "install", "-q"]
    proc = subprocess.run(pip + [str(wheel)], capture_output=True, text=True, timeout=900, env=CLEAN_ENV,
                          cwd=where.parent)
    if proc.returncode != 0:
        pytest.skip(f"pip could not install the runtime's dependencies (no network?): {proc.stderr[-500:]}")
    return where / "bin"


def size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


@pytest.mark.parametrize("which", ["this", "3.8"])
def test_runtime_only_install_runs_predict_and_verify(which, wheel, model_and_golden, tmp_path):
    python = sys.executable if which == "this" else python38()
    if python is None:
        pytest.skip("no Python 3.8 on this machine (pyenv install 3.8)")
    model, golden = model_and_golden
    venv = tmp_path / "venv"
    bin_ = runtime_env(python, wheel, venv)
    run = dict(cwd=tmp_path, env=CLEAN_ENV, capture_output=True, text=True, timeout=600)
    probe = subprocess.run([str(bin_ / "python"), "-c", "import importlib.util, sys, runtime; "
                            "print(sys.version_info[:2], importlib.util.find_spec('torch') is None, runtime.__file__)"],
                           **run)
    assert probe.returncode == 0, probe.stderr
    assert "True" in probe.stdout and str(venv) in probe.stdout  # no torch; the installed runtime, not the checkout
    if which == "3.8":
        assert "(3, 8)" in probe.stdout

    face = sorted((FACES / "cacd").glob("*.jpg"))[0]
    out = tmp_path / "pred"
    proc = subprocess.run([str(bin_ / "landmarks-predict"), "--model", str(model), "--input", str(face),
                           "--out", str(out)], **run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((out / "landmarks.json").read_text())
    assert len(doc["images"][0]["faces"][0]["landmarks"]) == 68

    report = tmp_path / "verify.json"
    proc = subprocess.run([str(bin_ / "landmarks-verify"), "--golden", str(golden), "--model", str(model),
                           "--faces", str(FACES), "--json", str(report)], **run)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads(report.read_text())["models"][str(model)]["pass"]
    print(f"runtime-only environment on Python {which}: {size_mb(venv):.0f} MB")
