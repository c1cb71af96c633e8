"""The main job end to end on a quick run: every step runs and the log stays short enough to read."""
import json
import subprocess
import sys

import pytest

from tests.conftest import DATA, ROOT, needs_data, needs_dlib, needs_masks


@pytest.mark.slow
@needs_data
@needs_masks
@needs_dlib
def test_quick_pipeline_runs_every_step_with_a_short_log(tmp_path):
    pytest.importorskip("modelopt")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "scripts/pipeline.py", "--quick", "--out", str(out), "--data", str(DATA)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800)
    log = (proc.stdout + proc.stderr).splitlines()
    assert proc.returncode == 0, "\n".join(log[-60:])
    assert len(log) < 200, f"{len(log)} lines"
    assert "\r" not in proc.stdout + proc.stderr  # no carriage-return progress piling up into one line
    assert max(len(line) for line in log if not line.startswith("$ ")) < 400  # echoed commands may be long
    summary = json.loads((out / "summary.json").read_text())
    steps = {s["step"]: s["status"] for s in summary["steps"]}
    # a quick run calibrates INT8 on 16 images: its parity may be outside the bound, which is a finding
    assert all(status == "ok" or status.startswith(("skipped: TensorRT", "ran; outside bound"))
               for status in steps.values()), steps
    assert "% of the inter-pupil distance, lower is better" in summary["units"]["nmse"]
    assert summary["samples_drawn_by"] and "mobilenet_l.onnx" in summary["artifacts"]
    assert not any("Collecting tensor data" in line for line in log)  # ModelOpt's chatter stays off
