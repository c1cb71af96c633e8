"""The main job: committed checkpoint -> ONNX -> FP16 / INT8 -> TensorRT engines -> verify -> benchmark -> samples.

    python scripts/pipeline.py [--out out] [--checkpoint weights/mobilenet_l.pt] [--data ../shared/data]

Every step is the command a user would run, printed before it runs. Steps that
need something this machine lacks (TensorRT, the face data) are skipped with a
line saying why. Ends with a summary table (also in OUT/summary.json).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Pipeline:
    def __init__(self, out: Path):
        self.out = out
        self.steps: list[tuple[str, str, float]] = []  # (step, status, seconds)
        self.sample_model: Path | None = None  # the model that drew the annotated samples

    def run(self, name: str, cmd: list[str], verdict=None) -> bool:
        """Run a step; ``verdict(returncode)`` may name a non-zero exit that is a finding, not a failure."""
        print(f"\n=== {name}\n$ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
        t = time.time()
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        status = "ok" if rc == 0 else (verdict and verdict(rc)) or "FAILED"
        self.steps.append((name, status, time.time() - t))
        return rc == 0

    def skip(self, name: str, why: str) -> None:
        print(f"\n=== {name}\nskipped: {why}", flush=True)
        self.steps.append((name, f"skipped: {why}", 0.0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "out", help="output folder (default: %(default)s)")
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "weights" / "mobilenet_l.pt")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="(default: %(default)s)")
    ap.add_argument("--golden-faces", type=int, default=200, help="test faces in the golden set (default: %(default)s)")
    ap.add_argument("--calib-count", type=int, help="INT8 calibration images (default: export/quantize.py's)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run of every step: 4 evaluated faces, 3 golden faces, 16 calibration images, "
                         "benchmark at batch 1 with 5 runs and no wait for a quiet machine")
    ap.add_argument("--verbose", action="store_true", help="let third-party tools print their own progress")
    args = ap.parse_args(argv)
    if args.quick:
        args.golden_faces, args.calib_count = 3, 16
    out, py = args.out, sys.executable
    out.mkdir(parents=True, exist_ok=True)
    faces, masks = args.data / "faces", args.data / "masks" / "nvidia_irregular_test"
    have_data = (faces / "splits.csv").exists() and masks.is_dir()
    have_trt = importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("pycuda") is not None
    p = Pipeline(out)
    onnx, fp16, int8 = out / "mobilenet_l.onnx", out / "mobilenet_l.fp16.onnx", out / "mobilenet_l.int8.onnx"
    golden = onnx.with_suffix(".golden.npz")

    if have_data:
        p.run("evaluate the PyTorch reference (paper protocol)",
              [py, "-m", "train.evaluate", "--checkpoint", str(args.checkpoint), "--faces", str(faces),
               "--masks", str(masks), "--split", "test", "--json", str(out / "eval_pytorch.json")]
              + (["--limit", "4"] if args.quick else []))
    else:
        p.skip("evaluate the PyTorch reference", f"no face data at {args.data}")
    if not p.run("export ONNX (+ golden set and parity check when data is present)",
                 [py, "-m", "export.export_onnx", "--force", "--checkpoint", str(args.checkpoint), "--out", str(onnx),
                  "--faces", str(faces), "--masks", str(masks), "--golden-faces", str(args.golden_faces)]):
        return summary(p)
    quant = [py, "-m", "export.quantize", "--force", "--onnx", str(onnx), "--fp16", str(fp16)] + (["--verbose"] if args.verbose else [])
    if have_data:
        quant += ["--int8", str(int8), "--calib-faces", str(faces)] + (
            ["--calib-count", str(args.calib_count)] if args.calib_count else [])
    else:
        p.skip("INT8 Q/DQ", f"no calibration images at {faces}")
    p.run("precision artifacts with TensorRT Model Optimizer", quant)
    models = [m for m in (onnx, fp16, int8) if m.exists()]
    for m, precision in ((onnx, "fp32"), (fp16, "fp16"), (int8, "int8")):
        engine = out / f"mobilenet_l.{precision}.engine"
        if not m.exists():
            continue
        if have_trt:
            if p.run(f"TensorRT engine {precision}", [py, "-m", "export.build_engine", "--onnx", str(m),
                                                      "--precision", precision, "--out", str(engine), "--force"]):
                models.append(engine)
        else:
            p.skip(f"TensorRT engine {precision}", "TensorRT/pycuda not installed (JetPack or NVIDIA's index)")
    if golden.exists():
        verify_json = out / "verify.json"
        verify_json.unlink(missing_ok=True)

        def parity_verdict(rc: int) -> str | None:  # exit 1 with a report: a model is outside its bound
            if rc != 1 or not verify_json.exists():
                return None
            failed = [Path(m).name for m, r in json.loads(verify_json.read_text())["models"].items() if not r["pass"]]
            return f"ran; outside bound: {', '.join(failed)}"

        p.run("parity verification without torch",
              [py, "-m", "runtime.verify", "--golden", str(golden), "--faces", str(faces), "--json",
               str(verify_json)] + [a for m in models for a in ("--model", str(m))], parity_verdict)
    else:
        p.skip("parity verification", "no golden set (needs the face data)")
    bench = [py, "-m", "train.benchmark", "--torch-checkpoint", str(args.checkpoint), "--json",
             str(out / "benchmark.json")] + [a for m in models for a in ("--model", str(m))] + (
        ["--batch", "1", "--runs", "5", "--warmup", "1", "--no-memory", "--settle-timeout", "0"] if args.quick
        else ["--batch", "1,8,32"])
    p.run("benchmark", bench + (["--dlib"] if importlib.util.find_spec("dlib") else []))
    if have_data:
        samples = out / "samples_in"
        samples.mkdir(exist_ok=True)
        for rel in ("cacd/0013_0.jpg", "cacd/0026_1.jpg", "taiwanese/0101a02.jpg"):
            link = samples / rel.replace("/", "_")
            if not link.exists() and (faces / rel).exists():
                link.symlink_to(faces / rel)
        p.sample_model = models[-1]
        p.run("annotated sample images", [py, "-m", "runtime.predict", "--model", str(models[-1]),
                                          "--input", str(samples), "--out", str(out / "samples")])
    else:
        p.skip("annotated sample images", f"no face images at {faces}")
    return summary(p)


def summary(p: Pipeline) -> int:
    out = p.out
    print("\n=== summary")
    for name, status, secs in p.steps:
        print(f"  {name:<62} {secs:6.1f} s  {status}")
    table = {"steps": [{"step": n, "status": s, "seconds": t} for n, s, t in p.steps]}
    for name in ("eval_pytorch", "verify", "benchmark"):
        f = out / f"{name}.json"
        if f.exists():
            table[name] = json.loads(f.read_text())
    table["units"] = {"nmse": "% of the inter-pupil distance, lower is better",
                      "delta_nmse": "NMSE percentage points against the PyTorch reference",
                      "ms_per_face": "milliseconds per face, median"}
    if "eval_pytorch" in table:
        print("  PyTorch NMSE (% of the inter-pupil distance, lower is better), all faces: " + ", ".join(
            f"{k} {v:.2f}" for k, v in table["eval_pytorch"]["nmse"]["all"].items()))
    for model, r in table.get("verify", {}).get("models", {}).items():
        print(f"  {Path(model).name:<28} {r['precision']:<5} max |ΔNMSE| {r['max_abs_delta_nmse']:.4f} points "
              f"(bound {r['bound']}) {'PASS' if r['pass'] else 'FAIL'}")
    for r in table.get("benchmark", {}).get("results", []):
        if r.get("batch") == 1:
            print(f"  {Path(str(r['model'])).name:<28} batch 1: {r['ms_per_face']:.2f} ms/face (median)")
    if table.get("benchmark", {}).get("clean") is False:
        print("  (the machine was busy during the benchmark: its figures are not clean; see benchmark.json)")
    artifacts = {f.name: str(f) for f in sorted(out.iterdir()) if f.is_file() and f.suffix in
                 (".onnx", ".engine", ".npz", ".json")}
    if (out / "samples").is_dir():
        artifacts["samples/"] = str(out / "samples")
    table["artifacts"] = artifacts
    table["samples_drawn_by"] = str(p.sample_model) if p.sample_model else None
    print("  artifacts: " + ", ".join(sorted(artifacts)) + f" (in {out})")
    if p.sample_model:
        print(f"  annotated samples drawn by {p.sample_model.name}: {out / 'samples'}")
    (out / "summary.json").write_text(json.dumps(table, indent=1))
    failed = [n for n, s, _ in p.steps if s == "FAILED"]
    print(f"\n{'FAILED: ' + ', '.join(failed) if failed else 'all steps ran'}; outputs in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
