"""Load test of the serve command on this machine's loopback interface, against the same model called in-process.

    python -m runtime.loadtest --model model.onnx --json loadtest.json                  # faces over HTTP
    python -m runtime.loadtest --model model.onnx --target landmarks --protocol grpc --concurrency 1,8,32,64

It starts the server itself (python -m runtime.serve, on free 127.0.0.1 ports), so it never reaches beyond
this machine, and stops it at the end. Requests cycle through --images test-split images:

  faces      one JPEG per request; the server decodes, detects and predicts. In-process: the same
             images decoded and LandmarkDetector.detect run on each in this process, as the server
             runs it.
  landmarks  --request-batch preprocessed crops per request; the server batches requests (dynamic
             batching). In-process: the backend on batches of --max-batch crops.

For each concurrency level (clients sending requests back to back, each on its own connection), the
server gets --seconds in --rounds blocks, each followed (or, every other round, preceded) by an
in-process block of the same length, with a short pause between blocks: a machine busy with something
else slows both alike, so the ratio stays fair. A level also stops at --requests requests. Reported per
level: faces/s through the server and in-process (medians over the rounds), their ratio (median of the
per-round ratios), server latency p50/p90/p99 over every request, errors, the largest landmark
difference from the in-process result in pixels (image pixels for faces, crop pixels at 256 for
landmarks), and the 1-minute load average; the machine's load before and after goes into the JSON.
--threads sets ONNX Runtime's threads on both sides; without it each keeps its default (the server shares
the CPUs out among its instances). Measured figures: docs/serving.md.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from core.data import DEFAULT_FACES, read_split
from core.files import write_json
from core.preprocess import crop_face, decode_image, to_input, whole_image_box
from core.progress import Progress

from .benchmark import SETTLE_S, machine_info, machine_load, parse_batches
from .detector import LandmarkDetector
from .serving.client import PROTOCOLS, TritonClient, error_message
from .serving.process import ServerProcess

TARGETS = ("faces", "landmarks")
MAX_CONCURRENCY = 64
ERRORS_KEPT = 3  # distinct error messages kept per level


@dataclass
class Workload:
    """What one request and one in-process batch do, and the reference landmarks to compare with."""
    requests: list  # per request: encoded image bytes (faces) or float32 crops (landmarks)
    reference: list[np.ndarray]  # per request: in-process landmarks, (F, 68, 2) image px or (n, 68, 2) crop px
    send: Callable[[TritonClient, object], tuple[np.ndarray, int]]  # -> (landmarks as the reference's, faces)
    run_batch: Callable[[int], int]  # (start index) -> faces done in-process


@dataclass
class Block:
    faces: int = 0
    seconds: float = 0.0
    latencies_ms: list = field(default_factory=list)
    errors: int = 0
    messages: list = field(default_factory=list)
    max_diff_px: float = 0.0


def load_images(faces_dir: Path, count: int) -> list[bytes]:
    """``count`` encoded test-split images, spread over the split (both of its datasets)."""
    paths = read_split(faces_dir, "test")
    if not paths:
        raise FileNotFoundError(f"{faces_dir}: no test-split images (splits.csv)")
    step = max(1, len(paths) // count)
    return [(faces_dir / p).read_bytes() for p in paths[::step][:count]]


def faces_workload(det: LandmarkDetector, images: list[bytes], max_batch: int) -> Workload:
    decoded = [decode_image(b) for b in images]
    reference = [np.array([f.landmarks for f in faces]).reshape(-1, 68, 2) for faces in map(det.detect, decoded)]

    def send(client: TritonClient, image: bytes):
        landmarks = client.faces(image)["landmarks"]
        return landmarks, len(landmarks)

    def run_batch(start: int) -> int:
        chunk = [images[(start + k) % len(images)] for k in range(max_batch)]
        return sum(len(det.detect(decode_image(b))) for b in chunk)

    return Workload(images, reference, send, run_batch)


def landmarks_workload(det: LandmarkDetector, images: list[bytes], max_batch: int, per_request: int) -> Workload:
    crops = []
    for data in images:  # the largest face, or the whole image when none is found
        image = decode_image(data)
        faces = det.detect(image)
        crops.append(crop_face(image, faces[0].box if faces else whole_image_box(*image.shape[:2]))[0])
    x = to_input(np.stack(crops))
    expected = np.concatenate([det.backend.run(x[i:i + max_batch])["landmarks"] for i in range(0, len(x), max_batch)])
    requests = [x[np.arange(i, i + per_request) % len(x)] for i in range(len(x))]
    reference = [expected[np.arange(i, i + per_request) % len(x)] * 256 for i in range(len(x))]

    def send(client: TritonClient, batch: np.ndarray):
        return client.landmarks(batch)["landmarks"] * 256, len(batch)

    def run_batch(start: int) -> int:
        det.backend.run(x[np.arange(start, start + max_batch) % len(x)])
        return max_batch

    return Workload(requests, reference, send, run_batch)


def server_block(url: str, protocol: str, work: Workload, concurrency: int, seconds: float, max_requests: int,
                 counter: itertools.count) -> Block:
    """``concurrency`` clients sending requests back to back for ``seconds`` or ``max_requests`` requests."""
    block, lock = Block(), threading.Lock()
    issued = itertools.count()
    clients = [TritonClient(url, protocol) for _ in range(concurrency)]

    def client_loop(client: TritonClient, end: float) -> None:
        while time.perf_counter() < end and next(issued) < max_requests:
            i = next(counter) % len(work.requests)
            t0 = time.perf_counter()
            try:
                landmarks, faces = work.send(client, work.requests[i])
            except Exception as e:  # the server's rejection, or a broken connection: counted, and carry on
                with lock:
                    block.errors += 1
                    message = error_message(e)[:300]
                    if message not in block.messages and len(block.messages) < ERRORS_KEPT:
                        block.messages.append(message)
                continue
            ms = (time.perf_counter() - t0) * 1000
            same = landmarks.shape == work.reference[i].shape  # not: a different number of faces than in-process
            diff = float(np.abs(landmarks - work.reference[i]).max(initial=0.0)) if same else float("inf")
            with lock:
                block.faces += faces
                block.latencies_ms.append(ms)
                block.max_diff_px = max(block.max_diff_px, diff)

    start = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(c, start + seconds)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    block.seconds = time.perf_counter() - start
    for c in clients:
        c.close()
    return block


def inprocess_block(work: Workload, max_batch: int, seconds: float, counter: itertools.count) -> Block:
    block = Block()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        block.faces += work.run_batch(next(counter) * max_batch)
        block.latencies_ms.append((time.perf_counter() - t0) * 1000)
    block.seconds = time.perf_counter() - start
    return block


def level_row(concurrency: int, server: list[Block], local: list[Block]) -> dict:
    rates = [b.faces / b.seconds for b in server]
    local_rates = [b.faces / b.seconds for b in local]
    ms = np.array([v for b in server for v in b.latencies_ms]) if any(b.latencies_ms for b in server) else np.array([0])
    messages = list(dict.fromkeys(m for b in server for m in b.messages))[:ERRORS_KEPT]
    return {
        "concurrency": concurrency,
        "server_faces_per_s": round(float(np.median(rates)), 1),
        "inprocess_faces_per_s": round(float(np.median(local_rates)), 1),
        "ratio": round(float(np.median([s / max(i, 1e-9) for s, i in zip(rates, local_rates)])), 3),
        "p50_ms": round(float(np.percentile(ms, 50)), 2), "p90_ms": round(float(np.percentile(ms, 90)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "inprocess_batch_ms": round(float(np.median([v for b in local for v in b.latencies_ms])), 2),
        "requests": sum(len(b.latencies_ms) for b in server) + sum(b.errors for b in server),
        "errors": sum(b.errors for b in server), "error_messages": messages,
        "max_diff_px": max(b.max_diff_px for b in server),
        "server_seconds": round(sum(b.seconds for b in server), 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def measure(args: argparse.Namespace, url: str, work: Workload) -> list[dict]:
    """Every concurrency level: server and in-process blocks taking turns; one row per level."""
    counter = itertools.count()
    server_block(url, args.protocol, work, 2, 1.0, 50, counter)  # warm-up: connections, first batches
    inprocess_block(work, args.max_batch, 0.5, counter)
    seconds, requests = args.seconds / args.rounds, -(-args.requests // args.rounds)
    progress = Progress(desc="load test", total=len(args.concurrency) * args.rounds, unit="round")
    rows = []
    for c in args.concurrency:
        server_blocks, local_blocks = [], []
        for r in range(args.rounds):
            for side in (("server", "in-process") if r % 2 == 0 else ("in-process", "server")):
                if side == "server":
                    server_blocks.append(server_block(url, args.protocol, work, c, seconds, requests, counter))
                else:
                    local_blocks.append(inprocess_block(work, args.max_batch, seconds, counter))
                time.sleep(SETTLE_S)
            progress.set_postfix(concurrency=c)
            progress.update()
        rows.append(level_row(c, server_blocks, local_blocks))
    progress.close()
    return rows


def parse_concurrency(text: str) -> list[int]:
    levels = parse_batches(text)
    if levels[-1] > MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"{text!r}: concurrency runs from 1 to {MAX_CONCURRENCY}")
    return levels


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m runtime.loadtest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path, metavar="M", help="model file (.onnx, .engine)")
    ap.add_argument("--target", choices=TARGETS, default="faces", help="model to load (default: %(default)s)")
    ap.add_argument("--protocol", choices=PROTOCOLS, default="http", help="(default: %(default)s)")
    ap.add_argument("--concurrency", type=parse_concurrency, default=[1, 8, 32], metavar="C,C,...",
                    help=f"client counts, 1 to {MAX_CONCURRENCY} (default: 1,8,32)")
    ap.add_argument("--seconds", type=float, default=20.0, help="server time per level (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=4, help="server/in-process blocks per level (default: %(default)s)")
    ap.add_argument("--requests", type=int, default=20000, help="at most this many requests per level "
                                                                "(default: %(default)s)")
    ap.add_argument("--images", type=int, default=64, help="test-split images to cycle through (default: %(default)s)")
    ap.add_argument("--faces", type=Path, default=DEFAULT_FACES, help="faces folder with splits.csv "
                                                                      "(default: %(default)s)")
    ap.add_argument("--request-batch", type=int, default=1, metavar="N",
                    help="crops per landmarks request (default: %(default)s)")
    ap.add_argument("--instances", type=int, default=2, help="server model instances (default: %(default)s, "
                                                                "as runtime.serve's)")
    ap.add_argument("--max-batch", type=int, default=32, metavar="B",
                    help="server's largest dynamic batch and the in-process batch (default: %(default)s)")
    ap.add_argument("--max-queue-delay-us", type=int, default=500, metavar="U", help="(default: %(default)s)")
    ap.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads, server and in-process alike")
    ap.add_argument("--no-mirror", dest="mirror", action="store_false",
                    help="faces: one landmark pass per face, server and in-process alike (default: mirror-averaged)")
    ap.add_argument("--json", required=True, type=Path, metavar="OUT.json", help="where to write the results")
    return ap


def cli() -> None:
    """Console-script entry point (pyproject.toml)."""
    sys.exit(main())


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if min(args.seconds, args.rounds, args.requests, args.images, args.request_batch, args.instances,
           args.max_batch) <= 0 or args.request_batch > args.max_batch:
        ap.error("--seconds, --rounds, --requests, --images, --instances and --max-batch must be positive, and "
                 "--request-batch between 1 and --max-batch")
    options = {"threads": args.threads} if args.threads else {}
    try:
        det = LandmarkDetector(args.model, batch_size=args.max_batch, mirror=args.mirror, **options)
        images = load_images(args.faces, args.images)
        work = (faces_workload(det, images, args.max_batch) if args.target == "faces"
                else landmarks_workload(det, images, args.max_batch, args.request_batch))
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    serve_options = [f"--instances={args.instances}", f"--max-batch={args.max_batch}",
                     f"--max-queue-delay-us={args.max_queue_delay_us}"]
    serve_options += [f"--threads={args.threads}"] if args.threads else []
    serve_options += [] if args.mirror else ["--no-mirror"]
    log_path = args.json.with_name(args.json.name + ".serve.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    load_before = machine_load()
    try:
        with ServerProcess(args.model, *serve_options, log_path=log_path) as server:
            rows = measure(args, server.url(args.protocol), work)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    load_after = machine_load()
    clean = not (load_before["busy"] or load_after["busy"])
    print_table(args, rows)
    if not clean:
        print(f"WARNING: the machine was busy (load {load_before['load_avg_1m']} before, {load_after['load_avg_1m']} "
              f"after, on {load_before['cpus']} CPUs): the ratios hold, absolute rates do not", file=sys.stderr)
    doc = {"machine": machine_info(args.threads), "clean": clean, "load": {"before": load_before, "after": load_after},
           "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "units": {"max_diff_px": "image pixels" if args.target == "faces" else "crop pixels at 256"},
           "results": rows}
    write_json(args.json, doc)
    print(f"wrote {args.json} (server log: {log_path})")
    return 0 if all(r["errors"] == 0 for r in rows) else 1


def print_table(args: argparse.Namespace, rows: list[dict]) -> None:
    print(f"{args.target} over {args.protocol}, {args.instances} instance(s), max batch {args.max_batch}; "
          f"in-process: batches of {args.max_batch}")
    head = f"{'clients':>7} {'server faces/s':>14} {'in-process':>10} {'ratio':>6} {'p50 ms':>8} {'p90 ms':>8} " \
           f"{'p99 ms':>8} {'requests':>8} {'errors':>6} {'max diff px':>11} {'load 1m':>7}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['concurrency']:>7} {r['server_faces_per_s']:>14.1f} {r['inprocess_faces_per_s']:>10.1f} "
              f"{r['ratio']:>6.2f} {r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['requests']:>8} "
              f"{r['errors']:>6} {r['max_diff_px']:>11.2g} {r['load_avg_1m']:>7.2f}")
        for message in r["error_messages"]:
            print(f"        error: {message}")


if __name__ == "__main__":
    sys.exit(main())
