"""Latency, throughput and memory of landmark models, with PyTorch eager and dlib as optional references.

    python -m runtime.benchmark --model model.onnx --model model_int8.onnx --batch 1,8,32 --json bench.json
    python -m runtime.benchmark --model model.onnx --batch 1 --dlib --threads 2 --json bench.json
    python -m train.benchmark ... --torch-checkpoint weights/mobilenet_l.pt   # + PyTorch eager (needs torch)

For every candidate and batch size: warm-up calls, then --runs timed calls of one batch, reported as the
median, p90 and p99 latency per batch, ms per face and faces/s. Every library runs with its defaults.
The candidates are interleaved in blocks of 10 calls (round robin, the starting candidate rotating every
round, a short pause between blocks so one library's spinning threads do not steal the cores from the
next), so a machine that is busy with something else slows them all alike and the ratios stay fair.
Ratios are per-face speedups (reference ms/face divided by candidate ms/face; above 1 means faster)
against the first --model, PyTorch eager and dlib.

What is timed: a model's backend call on ready float32 (N, 3, 256, 256) crops (PyTorch eager: the same
crops through the checkpoint's network); "preprocess" is crop + resample + normalise of a face, the
work a model needs before that call (LandmarkDetector does both); dlib is shape_predictor(image, box),
its whole landmark step, on a real face with dlib's own detector box. So the dlib ratios compare
dlib against preprocess + model per face.

Peak memory (peak_rss_mb): each candidate is loaded and run at the batch sizes in a fresh child process;
the figure is that process's RSS high-water mark (getrusage) minus its value before the candidate was
built: the backend library, the model, and the buffers up to that batch size. TensorRT device memory is
not part of it. --no-memory skips this (a few seconds per candidate).

A busy machine makes every ratio meaningless, so the benchmark first looks at the load (the 1-minute
load average and the share of CPU time other processes take over a second): above the core count it
says so, waits for the machine to settle (--settle-timeout), and if it stays busy it runs anyway but
prints a warning beside the results and marks them "clean": false in the JSON.

Measuring a Jetson: run it there with the .engine files (and the .onnx for ONNX Runtime), nothing else
running, after `sudo nvpmodel -m 0 && sudo jetson_clocks` so the clocks do not scale during the run.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import platform
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np

from core.data import DEFAULT_FACES
from core.files import write_json
from core.preprocess import crop_face, read_image, to_input, whole_image_box

from .faces import dlib_shape_predictor_path

BENCH_FACES = DEFAULT_FACES / "cacd"  # the benchmark times one real face from here
BLOCK = 10  # timed calls per candidate before the next one takes its turn
SETTLE_S = 0.25  # pause after each block: long enough for spinning thread pools to go to sleep


@dataclass
class Candidate:
    label: str
    kind: str  # "model", "torch", "dlib" or "preprocess"
    backend: str
    precision: str
    call: Callable[[int], object]  # runs one batch of n faces
    max_batch: int | None = None


@dataclass
class Spec:
    """What a child process needs to build the same candidate again (for the memory probe)."""
    kind: str
    path: str | None = None
    backend: str | None = None
    threads: int | None = None
    face: str | None = None
    label: str = ""
    builder: Callable[["Spec", np.ndarray], Candidate] | None = None  # kind "torch": from train.benchmark


def ru_maxrss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def face_sample(face: str | None) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """A real face image and its dlib box when there is one; otherwise noise framed as a whole-image crop."""
    if face and Path(face).is_file():
        image = read_image(face)
        if importlib.util.find_spec("dlib") is not None:
            from .faces import detect_faces

            boxes = detect_faces(image, "dlib")
            if boxes:
                return image, boxes[0]
        return image, whole_image_box(*image.shape[:2])
    image = np.random.default_rng(0).integers(0, 256, (250, 250, 3), dtype=np.uint8)
    return image, whole_image_box(250, 250)


def build(spec: Spec, max_batch: int, sample: tuple | None = None) -> Candidate:
    """The candidate ready to run; ``sample`` is face_sample(spec.face), computed once by the caller."""
    image, box = sample or face_sample(spec.face)
    if spec.kind in ("model", "torch"):  # the input buffer: ready crops for the largest batch
        crops = to_input(np.repeat(crop_face(image, box)[0][None], max_batch, axis=0))
    if spec.kind == "model":
        from .backends import backend_for, load_backend

        name = spec.backend or backend_for(spec.path)
        options = {"threads": spec.threads} if name == "onnxruntime" else {}
        be = load_backend(spec.path, name, **options)
        return Candidate(spec.label, "model", be.name, be.precision, lambda n: be.run(crops[:n]), be.max_batch)
    if spec.kind == "torch":  # the runtime never imports torch: train.benchmark hands in the builder
        return spec.builder(spec, crops)
    if spec.kind == "dlib":
        import dlib

        if spec.face is None or not Path(spec.face).is_file():
            raise RuntimeError("--dlib needs a real face image: pass --face IMAGE")
        predictor = dlib.shape_predictor(str(dlib_shape_predictor_path()))
        rgb, rect = np.ascontiguousarray(image[:, :, ::-1]), dlib.rectangle(*(int(round(v)) for v in box))
        return Candidate(spec.label, "dlib", "dlib", "fp64",
                         lambda n: [predictor(rgb, rect) for _ in range(n)])
    if spec.kind == "preprocess":
        return Candidate(spec.label, "preprocess", "opencv", "uint8",
                         lambda n: to_input(np.stack([crop_face(image, box)[0] for _ in range(n)])))
    raise ValueError(f"unknown candidate kind {spec.kind!r}")


def memory_probe(spec: Spec, batches: list[int]) -> dict[int, float]:
    """In a fresh process: RSS growth (MB) from building the candidate and running each batch size in turn."""
    sample = face_sample(spec.face)  # the test image and its box are not the candidate's
    before = ru_maxrss_mb()
    cand = build(spec, max(batches), sample)
    peaks = {}
    for n in batches:
        if cand.max_batch is None or n <= cand.max_batch:
            cand.call(n)
            cand.call(n)
            peaks[n] = round(ru_maxrss_mb() - before, 1)
    return peaks


def time_interleaved(cands: list[Candidate], n: int, warmup: int, runs: int, block: int = BLOCK,
                     settle_s: float = SETTLE_S) -> dict[str, list[float]]:
    """Seconds per call of each candidate at batch n, the candidates taking turns in blocks of calls.

    Each library runs with its own defaults, busy-waiting thread pools included (ONNX Runtime's and
    OpenMP's workers keep spinning for a while after a call). Calls one after another of different
    libraries would therefore fight over the cores, so a candidate runs a block of calls, then the
    machine settles before the next one; the first call of each block wakes the pool and is not timed.
    """
    for c in cands:
        for _ in range(warmup):
            c.call(n)
        time.sleep(settle_s)
    times: dict[str, list[float]] = {c.label: [] for c in cands}
    for r in range(-(-runs // block)):
        k = r % len(cands)  # rotate who goes first: no candidate always runs right after the same other one
        for c in cands[k:] + cands[:k]:
            c.call(n)
            for _ in range(min(block, runs - r * block)):
                t0 = time.perf_counter()
                c.call(n)
                times[c.label].append(time.perf_counter() - t0)
            time.sleep(settle_s)
    return times


def machine_info(threads: int | None) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    info = {
        "cpu": cpu, "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
        "threads": threads, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("numpy", "onnxruntime", "onnxruntime-gpu", "opencv-python-headless", "tensorrt", "torch", "dlib-bin"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return info


def speedups(rows: list[dict], reference: str, extra_ms: dict[int, float] | None = None) -> dict:
    """Per-face speedup of each model/torch row over ``reference``, by batch (extra_ms: added to the candidates)."""
    out: dict[str, dict[str, float]] = {}
    for n in sorted({r["batch"] for r in rows}):
        ref = next((r for r in rows if r["model"] == reference and r["batch"] == n), None)
        if ref is None:
            continue
        add = (extra_ms or {}).get(n, 0.0)
        out[str(n)] = {r["model"]: round(ref["ms_per_face"] / (r["ms_per_face"] + add), 3)
                       for r in rows if r["batch"] == n and r["kind"] in ("model", "torch") and r["model"] != reference}
    return {"reference": reference, "by_batch": out}


def parse_batches(text: str) -> list[int]:
    try:
        batches = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected batch sizes like 1,8,32") from None
    if not batches or batches[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: batch sizes must be positive integers")
    return batches


def machine_load(window_s: float = 1.0) -> dict:
    """The 1-minute load average and how many CPUs' worth of time other processes took over ``window_s``."""
    def cpu_times() -> tuple[int, int]:
        fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = {"cpus": cpus, "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    if Path("/proc/stat").exists():
        total0, idle0 = cpu_times()
        time.sleep(window_s)
        total1, idle1 = cpu_times()
        busy = 1 - (idle1 - idle0) / max(1, total1 - total0)
        load["busy_cpus"] = round(busy * (os.cpu_count() or cpus), 2)
    load["busy"] = bool(load.get("busy_cpus", 0) > 0.5 * cpus or (load["load_avg_1m"] or 0) > cpus)
    return load


def wait_until_quiet(timeout_s: float, poll_s: float = 5.0) -> dict:
    """Poll the load until the machine is quiet or ``timeout_s`` has passed; the last reading."""
    load, start = machine_load(), time.time()
    if load["busy"]:
        print(f"machine busy (load {load['load_avg_1m']} on {load['cpus']} CPUs, other processes using "
              f"{load.get('busy_cpus')} CPUs): waiting up to {timeout_s:.0f} s for it to settle", file=sys.stderr)
    while load["busy"] and time.time() - start < timeout_s:
        time.sleep(poll_s)
        load = machine_load()
    return load


def cli() -> None:
    """Console-script entry point (pyproject.toml)."""
    sys.exit(main())


def main(argv: list[str] | None = None, torch_builder: Callable | None = None) -> int:
    """The benchmark; ``torch_builder`` (train.benchmark) adds --torch-checkpoint, PyTorch eager as a candidate."""
    ap = argparse.ArgumentParser(prog="python -m train.benchmark" if torch_builder else "python -m runtime.benchmark",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, metavar="M",
                    help="model file (.onnx, .engine); repeat to compare; the first is the ratios' reference")
    ap.add_argument("--backend", choices=["onnxruntime", "tensorrt"], help="override the backend chosen by extension")
    ap.add_argument("--batch", type=parse_batches, default=[1, 8, 32], help="batch sizes (default: 1,8,32)")
    ap.add_argument("--warmup", type=int, default=10,
                    help="untimed calls per candidate and batch (default: %(default)s)")
    ap.add_argument("--runs", type=int, default=50, help="timed calls per candidate and batch (default: %(default)s)")
    ap.add_argument("--threads", type=int, help="intra-op threads for ONNX Runtime and PyTorch (default: theirs)")
    if torch_builder:
        ap.add_argument("--torch-checkpoint", metavar="PT", help="also time PyTorch eager on this checkpoint")
    ap.add_argument("--dlib", action="store_true", help="also time dlib's 68-point shape predictor on a real face")
    ap.add_argument("--face", default=None,
                    help=f"real face image for dlib and the inputs (default: first of {BENCH_FACES})")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    ap.add_argument("--settle-timeout", type=float, default=120, metavar="S",
                    help="how long to wait for a busy machine to settle before timing anyway (default: %(default)s)")
    ap.add_argument("--json", required=True, type=Path, metavar="OUT.json", help="where to write the results")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        ap.error("--runs must be at least 1 and --warmup at least 0")
    face = args.face or next(iter(sorted(glob.glob(str(BENCH_FACES / "*.jpg")))), None)

    specs, seen = [], set()
    for m in args.model:
        label = Path(m).name if Path(m).name not in seen else m
        seen.add(label)
        specs.append(Spec("model", m, args.backend, args.threads, face, label))
    specs.append(Spec("preprocess", face=face, label="preprocess"))
    torch_checkpoint = getattr(args, "torch_checkpoint", None)
    if torch_checkpoint:
        specs.append(Spec("torch", torch_checkpoint, threads=args.threads, face=face, label="pytorch-eager",
                          builder=torch_builder))
    if args.dlib:
        specs.append(Spec("dlib", face=face, label="dlib-shape-predictor"))
    try:
        sample = face_sample(face)
        cands = [build(s, max(args.batch), sample) for s in specs]
        memory: dict[str, dict[int, float]] = {}
        if not args.no_memory:
            with ProcessPoolExecutor(1, mp_context=get_context("forkserver"), max_tasks_per_child=1) as pool:
                # forkserver, not spawn: on Linux an exec'd child inherits its parent's RSS high-water mark
                # (which would hide the candidate's); children forked from the small server start low.
                for s in specs:  # one fresh process per candidate
                    memory[s.label] = pool.submit(memory_probe, s, args.batch).result()
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    print(f"face: {face or 'none found: random pixels'}; warm-up {args.warmup}, {args.runs} interleaved runs",
          file=sys.stderr)
    load_before = wait_until_quiet(args.settle_timeout)
    rows = []
    for n in args.batch:
        active = [c for c in cands if c.max_batch is None or n <= c.max_batch]
        for c in cands:
            if c not in active:
                print(f"skipped {c.label} at batch {n}: its maximum batch is {c.max_batch}", file=sys.stderr)
        times = time_interleaved(active, n, args.warmup, args.runs)
        for c in active:
            ms = np.array(times[c.label]) * 1000
            median = float(np.median(ms))
            rows.append({
                "model": c.label, "kind": c.kind, "backend": c.backend, "precision": c.precision, "batch": n,
                "median_ms": round(median, 4), "p90_ms": round(float(np.percentile(ms, 90)), 4),
                "p99_ms": round(float(np.percentile(ms, 99)), 4), "ms_per_face": round(median / n, 4),
                "faces_per_s": round(1000 * n / median, 1), "peak_rss_mb": memory.get(c.label, {}).get(n),
            })

    pre = {r["batch"]: r["ms_per_face"] for r in rows if r["kind"] == "preprocess"}
    ratios = {"note": "per-face speedup = reference ms/face / candidate ms/face (>1: candidate faster); "
                      "vs_dlib adds the preprocess ms/face to each candidate, as dlib's figure includes its own",
              "vs_first": speedups(rows, specs[0].label)}
    if torch_checkpoint:
        ratios["vs_pytorch"] = speedups(rows, "pytorch-eager")
    if args.dlib:
        ratios["vs_dlib"] = speedups(rows, "dlib-shape-predictor", pre)

    load_after = machine_load()
    clean = not (load_before["busy"] or load_after["busy"])
    print_table(rows, ratios)
    if not clean:
        print(f"WARNING: the machine was busy while timing (before: load {load_before['load_avg_1m']}, "
              f"{load_before.get('busy_cpus')} CPUs used by others; after: load {load_after['load_avg_1m']}): "
              f"the figures and ratios above are not clean measurements; run again on a quiet machine",
              file=sys.stderr)
    doc = {"machine": machine_info(args.threads), "clean": clean,
           "load": {"before": load_before, "after": load_after},
           "settings": {"batches": args.batch, "warmup": args.warmup, "runs": args.runs, "face": face,
                        "interleaved": f"round robin in blocks of {BLOCK} calls, {SETTLE_S} s settle between blocks, "
                                       "starting candidate rotated each round"},
           "results": rows, "ratios": ratios}
    write_json(args.json, doc)
    print(f"wrote {args.json}")
    return 0


def print_table(rows: list[dict], ratios: dict) -> None:
    head = f"{'model':<28} {'backend':<13} {'prec':<5} {'batch':>5} {'median ms':>10} {'p90 ms':>9} {'p99 ms':>9} " \
           f"{'ms/face':>8} {'faces/s':>9} {'RSS MB':>7}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        rss = "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"
        print(f"{r['model'][:28]:<28} {r['backend']:<13} {r['precision']:<5} {r['batch']:>5} {r['median_ms']:>10.3f} "
              f"{r['p90_ms']:>9.3f} {r['p99_ms']:>9.3f} {r['ms_per_face']:>8.3f} {r['faces_per_s']:>9.1f} {rss:>7}")
    for key, r in ratios.items():
        if key == "note":
            continue
        for n, by in r["by_batch"].items():
            if by:
                print(f"per-face speedup vs {r['reference']} at batch {n}: "
                      + ", ".join(f"{m} {x:.2f}x" for m, x in by.items()))


if __name__ == "__main__":
    sys.exit(main())
