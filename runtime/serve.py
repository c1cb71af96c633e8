"""Serve landmarks to many clients through NVIDIA Triton Inference Server (PyTriton): HTTP, gRPC, health
and Prometheus metrics, dynamic batching across clients, several model instances.

    python -m runtime.serve --model model.onnx                    # or a TensorRT .engine
    python -m runtime.serve --model model.engine --host 0.0.0.0 --instances 3 --max-batch 16

Two models (their tensors: runtime/serving/models.py; a client: scripts/triton_client.py):

  landmarks  preprocessed crops in (input FP32 [N,3,256,256]), the network's outputs out (landmarks,
             and visibility and face_score for models with heads). Triton's dynamic batcher merges
             requests from all clients into batches of up to --max-batch, waiting at most
             --max-queue-delay-us for a batch to fill.
  faces      one encoded image per request (image BYTES [1]: JPEG/PNG bytes) and optional face boxes
             (boxes FP32 [K,4]), its faces out (boxes, landmarks in image pixels, visibility,
             face_score): decoding, detection and cropping happen on the server, so a client needs
             nothing but a Triton client. Requests are not merged: PyTriton can only fail a whole
             batch, and one corrupt image must not fail the requests batched with it. --instances
             requests run at once.

Both models run --instances copies (each its own backend: TensorRT contexts are single-threaded).
A bad request (wrong shape or dtype, corrupt image bytes, a box outside the image) gets an error naming
the problem and the server carries on. SIGINT or SIGTERM stop it cleanly.

On first start with NumPy 2 the command makes a small environment for Triton's Python-backend stub
(numpy<2 and pyzmq, with pip; runtime/serving/pytriton_fixes.py says why) in --stub-env.
Production servers without Python models: export/triton_repo.py writes a model repository for a stock
Triton container (docs/serving.md).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from .backends import backend_for
from .detector import LandmarkDetector
from .serving.models import (
    FACES_MODEL,
    LANDMARKS_MODEL,
    FacesModel,
    LandmarksModel,
    TensorSpec,
    faces_tensors,
    landmarks_tensors,
)
from .serving.pytriton_fixes import default_stub_env, prepare

DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}  # Triton's own defaults
DEFAULT_MAX_BATCH = 32  # batches only grow this large under load; GPUs gain from them, CPUs little past 8
EXIT_TIMEOUT_S = 10  # how long Triton lets requests in flight finish when stopping


class PortTaken(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"serve: {message}", file=sys.stderr, flush=True)


def check_ports(host: str, ports: dict[str, int]) -> None:
    """PortTaken naming the first port another process listens on (or one named twice); Triton itself
    would only time out."""
    if len(set(ports.values())) < len(ports):
        raise PortTaken(f"the same port twice in {ports}: give --http-port, --grpc-port and --metrics-port "
                        "different ports")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for name, port in ports.items():
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed connection's port is free
            try:
                s.bind((host, port))
            except OSError as e:
                raise PortTaken(f"{name} port {port} on {host} is taken ({e.strerror}): stop what listens there "
                                f"or choose another with --{name}-port") from None


def triton_tensors(specs: list[TensorSpec]) -> list:
    from pytriton.model_config import Tensor

    return [Tensor(name=s.name, dtype=s.dtype, shape=s.shape, optional=s.optional) for s in specs]


def landmarks_callable(model: LandmarksModel):
    from pytriton.decorators import batch

    @batch
    def infer(**inputs):
        return model(inputs["input"])

    return infer


def faces_callable(model: FacesModel):
    def infer(requests):
        return [model(r["image"].reshape(-1)[0], r.data.get("boxes")) for r in requests]

    return infer


def bind_models(triton, args: argparse.Namespace, detectors: list[LandmarkDetector]) -> None:
    """Both models on ``triton``: the first half of ``detectors`` serves landmarks, the second half faces."""
    from pytriton.model_config import DynamicBatcher, ModelConfig

    n = args.instances
    outputs = detectors[0].backend.outputs
    inputs, outs = landmarks_tensors(outputs)
    triton.bind(model_name=LANDMARKS_MODEL, infer_func=[landmarks_callable(LandmarksModel(d.backend))
                                                        for d in detectors[:n]],
                inputs=triton_tensors(inputs), outputs=triton_tensors(outs), strict=True,
                config=ModelConfig(max_batch_size=args.max_batch,
                                   batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us)))
    inputs, outs = faces_tensors(outputs)
    triton.bind(model_name=FACES_MODEL, infer_func=[faces_callable(FacesModel(d)) for d in detectors[n:]],
                inputs=triton_tensors(inputs), outputs=triton_tensors(outs), strict=True,
                config=ModelConfig(batching=False))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m runtime.serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path, metavar="M", help="model file (.onnx, .engine)")
    ap.add_argument("--backend", choices=["onnxruntime", "tensorrt"], help="override the backend chosen by extension")
    ap.add_argument("--instances", type=positive, default=2, metavar="N",
                    help="model instances per model, each with its own backend: requests served at once "
                         "(default: %(default)s)")
    ap.add_argument("--max-batch", type=positive, metavar="B",
                    help=f"largest batch the dynamic batcher forms for landmarks (default: {DEFAULT_MAX_BATCH}, or "
                         "an engine's profile maximum when smaller; at most that)")
    ap.add_argument("--max-queue-delay-us", type=int, default=500, metavar="U",
                    help="how long a landmarks request may wait for others to batch with (default: %(default)s)")
    ap.add_argument("--threads", type=positive, metavar="T",
                    help="ONNX Runtime intra-op threads per instance (default: ONNX Runtime's own with one "
                         "instance; with several, the usable CPUs shared out, as their pools would otherwise "
                         "fight over the cores)")
    ap.add_argument("--no-mirror", dest="mirror", action="store_false",
                    help="faces: one landmark pass per face instead of the mirror-averaged two (core.mirror): about "
                         "half the landmark cost, slightly less accurate")
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 for all)")
    for name, port in DEFAULT_PORTS.items():
        ap.add_argument(f"--{name}-port", type=int, default=port, metavar="P", help=f"{name} port (default: {port})")
    ap.add_argument("--stub-env", type=Path, default=default_stub_env(), metavar="DIR",
                    help="environment for Triton's Python-backend stub, made on first use when NumPy here is 2.x "
                         "(default: %(default)s)")
    ap.add_argument("--verbose", action="store_true", help="PyTriton's own log lines too")
    return ap


def ort_threads(args: argparse.Namespace) -> int | None:
    """ONNX Runtime threads per instance: --threads, or the usable CPUs shared out among several instances."""
    if args.threads or args.instances == 1:
        return args.threads
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // args.instances)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def cli() -> None:
    """Console-script entry point (pyproject.toml)."""
    sys.exit(main())


def load_detectors(args: argparse.Namespace) -> list[LandmarkDetector]:
    """2 x --instances detectors (landmarks' instances, then faces'); settles --max-batch against the model."""
    options = {"threads": ort_threads(args)} if (args.backend or backend_for(args.model)) == "onnxruntime" else {}
    detectors = [LandmarkDetector(args.model, args.backend, batch_size=args.max_batch or DEFAULT_MAX_BATCH,
                                  mirror=args.mirror, **options) for _ in range(2 * args.instances)]
    engine_max = detectors[0].backend.max_batch  # None: any batch (ONNX Runtime)
    if engine_max and args.max_batch and args.max_batch > engine_max:
        raise ValueError(f"--max-batch {args.max_batch} exceeds {args.model}'s profile maximum {engine_max}")
    args.max_batch = args.max_batch or min(DEFAULT_MAX_BATCH, engine_max or DEFAULT_MAX_BATCH)
    return detectors


def serve(args: argparse.Namespace, ports: dict[str, int], detectors: list[LandmarkDetector]) -> int:
    """Run Triton with both models until SIGINT or SIGTERM (exit status 0) or until it fails (1)."""
    from pytriton.triton import Triton, TritonConfig

    config = TritonConfig(http_address=args.host, http_port=ports["http"], grpc_address=args.host,
                          grpc_port=ports["grpc"], metrics_address=args.host, metrics_port=ports["metrics"],
                          exit_timeout_secs=EXIT_TIMEOUT_S)
    stop_requested = []

    def stop(signum, frame):  # SIGTERM (docker stop, Kubernetes) stops the server the way Ctrl-C does
        stop_requested.append(signal.Signals(signum).name)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    backend = detectors[0].backend
    try:
        with Triton(config=config) as triton:
            bind_models(triton, args, detectors)
            log(f"ready: models {LANDMARKS_MODEL} (batches up to {args.max_batch}, queue delay "
                f"{args.max_queue_delay_us} us) and {FACES_MODEL}, {args.instances} instance(s) each, "
                f"{args.model} on {backend.name} {backend.precision}, outputs {', '.join(backend.outputs)}")
            log(f"http {args.host}:{ports['http']}  grpc {args.host}:{ports['grpc']}  "
                f"metrics http://{args.host}:{ports['metrics']}/metrics  (Ctrl-C or SIGTERM stops)")
            triton.serve()  # returns on SIGINT/SIGTERM, or when Triton or a model dies
    except KeyboardInterrupt:
        pass  # a signal while starting: leaving the with block has stopped Triton
    except Exception as e:  # PyTriton's start-up errors (timeouts, Triton exiting) have no common base class
        log(f"error: Triton did not start: {e.__class__.__name__}: {e}")
        return 1
    if not stop_requested:
        log("error: Triton or a model instance stopped unexpectedly (its log is above)")
        return 1
    log(f"stopped ({stop_requested[0]})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    ports = {name: getattr(args, f"{name}_port") for name in DEFAULT_PORTS}
    if args.max_queue_delay_us < 0:
        log("error: --max-queue-delay-us must be 0 or more")
        return 2
    try:
        check_ports(args.host, ports)
        import pytriton  # noqa: F401  (only to say clearly when the serve extra is missing)
    except PortTaken as e:
        log(f"error: {e}")
        return 2
    except ImportError:
        log("error: serving needs PyTriton and tritonclient: pip install 'occlusion-landmarks[serve]'")
        return 2
    try:
        detectors = load_detectors(args)
        prepare(args.stub_env, log)
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as e:
        log(f"error: {e}")
        return 2
    return serve(args, ports, detectors)


if __name__ == "__main__":
    sys.exit(main())
