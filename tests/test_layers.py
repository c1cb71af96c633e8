"""The architecture as a checked rule: imports only run downwards (export -> calibration -> train -> runtime
-> core) and the runtime and the core never import torch or training code (import-linter, pyproject.toml)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def test_import_layers_are_kept():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(lint).exists():
        pytest.skip("import-linter not installed (the dev extra)")
    proc = subprocess.run([lint, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "2 kept, 0 broken" in proc.stdout


def test_the_sample_recipe_has_one_home():
    """Face crops are made by core.preprocess.crop_face. The only other crop_matrix + warp pairs are the
    training cache (a margin around the canonical crop, for jitter) and the augmentations' patches."""
    by_hand = {p.relative_to(ROOT).as_posix() for p in ROOT.glob("*/*.py")
               if p.parts[-2] not in ("tests", ".venv") and "warp(" in p.read_text()
               and "crop_matrix(" in p.read_text()}
    assert by_hand == {"core/preprocess.py", "core/augment.py", "train/dataset.py"}
    users = {p.relative_to(ROOT).as_posix() for p in ROOT.glob("*/*.py")
             if p.parts[-2] not in ("tests", ".venv") and "crop_face(" in p.read_text()}
    assert {"runtime/detector.py", "runtime/golden.py", "runtime/benchmark.py", "calibration/dataset.py",
            "core/samples.py"} <= users
