"""Write a Triton model repository for production servers: the landmark model as a TensorRT plan
(``tensorrt_plan``) or an ONNX file (``onnxruntime_onnx``), with a config.pbtxt that a stock Triton container
(nvcr.io/nvidia/tritonserver:<yy.mm>-py3) loads as is.

    python -m export.triton_repo --model model.engine --out triton_repo      # max batch: the engine's profile
    python -m export.triton_repo --model model.onnx --out triton_repo --kind gpu --instances 2 --max-batch 32

writes (the model folder assembled aside and renamed into place when complete)

    triton_repo/landmarks/config.pbtxt
    triton_repo/landmarks/1/model.plan  + model.plan.json (the engine's sidecar: what it was built for)
                         or 1/model.onnx

The model takes preprocessed crops and returns the network's outputs: the tensors of the ``landmarks`` model
of ``python -m runtime.serve`` (runtime/serving/models.py), so its clients work against either server:
input FP32 [N,3,256,256], landmarks FP32 [N,68,2] and, for models with heads, visibility [N,68] and
face_score [N,1] (the network's [N], reshaped: Triton gives every sample at least one dimension).
Dynamic batching up to max_batch_size, which for an engine is its optimisation profile's maximum (the
profile must start at batch 1: Triton sends batches from 1 up). The config is parsed against Triton's own
model-configuration schema (model_config.proto, shipped in tritonclient) before anything is written.

An engine runs only on the GPU model and TensorRT version it was built for: build it on the target with
the container's TensorRT (the sidecar records both). The tensorrt_plan path has never run here (no
TensorRT on this machine); docs/serving.md says how DeepStream and Kubernetes use the repository.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.files import sha256_file
from runtime.backends import ENGINE_SUFFIXES, INPUT_CHW, INPUT_NAME, OUTPUTS, load_backend
from runtime.serving.models import LANDMARKS_MODEL, landmarks_tensors
from runtime.tensorrt_backend import read_sidecar, sidecar_path

DEFAULT_MAX_BATCH = 32  # ONNX models: any batch runs; this caps what the dynamic batcher forms
DEFAULT_QUEUE_DELAY_US = 500
VERSION = "1"


@dataclass
class ModelFacts:
    platform: str  # "tensorrt_plan" or "onnxruntime_onnx"
    filename: str  # Triton's default file name for the platform
    outputs: tuple[str, ...]  # the network's output names, "landmarks" first
    max_batch: int
    note: str  # where the facts came from, for the config's header comment


def onnx_outputs(path: Path) -> tuple[str, ...]:
    """The landmark outputs of an ONNX file, checked as the runtime checks them; its input must be ``input``."""
    backend = load_backend(path, "onnxruntime")
    if backend.input_name != INPUT_NAME:
        raise ValueError(f"{path}: its input is named {backend.input_name!r}; Triton's config and clients use "
                         f"{INPUT_NAME!r} (re-export with export/export_onnx.py)")
    return backend.outputs


def engine_facts(engine: Path, onnx: Path | None, max_batch: int | None) -> ModelFacts:
    """An engine's max batch from its sidecar's profile, and its outputs from the ONNX it was built from."""
    sidecar = read_sidecar(engine)
    try:
        low, high = int(sidecar["profile"]["min"][0]), int(sidecar["profile"]["max"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        raise ValueError(f"{sidecar_path(engine)}: no optimisation profile (profile.min/max); rebuild the engine "
                         "with export/build_engine.py") from None
    if low != 1:
        raise ValueError(f"{engine}: its profile starts at batch {low}, but Triton sends batches from 1: rebuild "
                         f"with export/build_engine.py --batch 1,OPT,{high}")
    if max_batch is not None and max_batch > high:
        raise ValueError(f"--max-batch {max_batch} exceeds {engine}'s profile maximum {high}")
    onnx = onnx or Path(sidecar.get("onnx") or "")
    if not onnx.is_file():
        raise FileNotFoundError(f"{engine}: the ONNX it was built from ({onnx or 'not recorded'}) is not there; "
                                "pass it with --onnx (its outputs name the config's)")
    if sidecar.get("onnx_sha256") and sha256_file(onnx) != sidecar["onnx_sha256"]:
        raise ValueError(f"{onnx} is not the ONNX {engine} was built from (sha256 differs from its sidecar's)")
    return ModelFacts("tensorrt_plan", "model.plan", onnx_outputs(onnx), max_batch or high,
                      f"TensorRT {sidecar.get('tensorrt_version')} {sidecar.get('precision')} engine for "
                      f"{sidecar.get('gpu_name')} (sm{sidecar.get('compute_capability')}), profile batch {low}-{high}")


def model_facts(model: Path, onnx: Path | None, max_batch: int | None) -> ModelFacts:
    if not model.is_file():
        raise FileNotFoundError(f"{model}: model file not found")
    if model.suffix.lower() in ENGINE_SUFFIXES:
        return engine_facts(model, onnx, max_batch)
    if model.suffix.lower() != ".onnx":
        raise ValueError(f"{model}: expected an .onnx file or a TensorRT engine ({', '.join(sorted(ENGINE_SUFFIXES))})")
    return ModelFacts("onnxruntime_onnx", "model.onnx", onnx_outputs(model), max_batch or DEFAULT_MAX_BATCH,
                      f"ONNX, sha256 {sha256_file(model)[:16]}")


def config_text(name: str, facts: ModelFacts, kind: str, instances: int, queue_delay_us: int, source: str) -> str:
    """config.pbtxt for the model (protobuf text format of Triton's ModelConfig)."""
    def dims(shape) -> str:
        return f"[ {', '.join(str(d) for d in shape)} ]"

    _, specs = landmarks_tensors(facts.outputs)
    outputs = []
    for spec, actual in zip(specs, facts.outputs):  # an older export's single output keeps its own name
        reshape = "\n    reshape: { shape: [ ] }" if OUTPUTS.get(actual) == () else ""
        outputs.append(f'  {{\n    name: "{actual}"\n    data_type: TYPE_FP32\n    dims: {dims(spec.shape)}{reshape}\n  }}')
    joined = ",\n".join(outputs)
    return (f"# Written by export/triton_repo.py from {source}: {facts.note}.\n"
            f'name: "{name}"\n'
            f'platform: "{facts.platform}"\n'
            f"max_batch_size: {facts.max_batch}\n"
            f'input [\n  {{\n    name: "{INPUT_NAME}"\n    data_type: TYPE_FP32\n    dims: {dims(INPUT_CHW)}\n  }}\n]\n'
            f"output [\n{joined}\n]\n"
            f"dynamic_batching {{\n  max_queue_delay_microseconds: {queue_delay_us}\n}}\n"
            f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_{kind.upper()}\n  }}\n]\n")


def parse_config(text: str):
    """The config parsed against Triton's ModelConfig schema (tritonclient's model_config.proto); ValueError
    naming the problem; ImportError without tritonclient."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise ValueError(f"config.pbtxt does not parse as Triton's ModelConfig: {e}") from None


def write_repo(model: Path, out: Path, *, name: str = LANDMARKS_MODEL, onnx: Path | None = None,
               max_batch: int | None = None, kind: str | None = None, instances: int = 1,
               queue_delay_us: int = DEFAULT_QUEUE_DELAY_US, force: bool = False) -> Path:
    """Write ``out/name`` (config.pbtxt and version 1 of the model); returns that folder.

    ``kind``: "gpu" or "cpu" instances (default: gpu for an engine, which only runs there; cpu for ONNX).
    """
    model = Path(model)
    facts = model_facts(model, onnx, max_batch)
    kind = kind or ("gpu" if facts.platform == "tensorrt_plan" else "cpu")
    if kind == "cpu" and facts.platform == "tensorrt_plan":
        raise ValueError("a TensorRT engine runs on the GPU only: --kind gpu")
    if instances < 1 or facts.max_batch < 1 or queue_delay_us < 0:
        raise ValueError("--instances and --max-batch must be at least 1, --max-queue-delay-us at least 0")
    text = config_text(name, facts, kind, instances, queue_delay_us, model.name)
    try:
        parse_config(text)
    except ImportError:
        print("warning: config.pbtxt not checked against Triton's schema: tritonclient is not installed "
              "(pip install 'occlusion-landmarks[serve]')", file=sys.stderr)
    target = Path(out) / name
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists; pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        (tmp / VERSION).mkdir()
        shutil.copyfile(model, tmp / VERSION / facts.filename)
        if facts.platform == "tensorrt_plan":
            shutil.copyfile(sidecar_path(model), tmp / VERSION / f"{facts.filename}.json")
        (tmp / "config.pbtxt").write_text(text)
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; a server in a container may run as another user
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m export.triton_repo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path, metavar="M", help="TensorRT engine (.engine/.plan) or .onnx")
    ap.add_argument("--out", required=True, type=Path, metavar="REPO", help="model repository folder")
    ap.add_argument("--name", default=LANDMARKS_MODEL, help="model name (default: %(default)s)")
    ap.add_argument("--onnx", type=Path, help="for an engine: the ONNX it was built from (default: its sidecar's)")
    ap.add_argument("--max-batch", type=int, metavar="B",
                    help=f"max_batch_size (default: an engine's profile maximum; {DEFAULT_MAX_BATCH} for ONNX)")
    ap.add_argument("--kind", choices=["gpu", "cpu"], help="instance kind (default: gpu for an engine, cpu for ONNX)")
    ap.add_argument("--instances", type=int, default=1, help="instances per device (default: %(default)s)")
    ap.add_argument("--max-queue-delay-us", type=int, default=DEFAULT_QUEUE_DELAY_US, metavar="U",
                    help="how long a request may wait for others to batch with (default: %(default)s)")
    ap.add_argument("--force", action="store_true", help="replace an existing model folder")
    return ap


def cli() -> None:
    """Console-script entry point (pyproject.toml)."""
    sys.exit(main())


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        target = write_repo(args.model, args.out, name=args.name, onnx=args.onnx, max_batch=args.max_batch,
                            kind=args.kind, instances=args.instances, queue_delay_us=args.max_queue_delay_us,
                            force=args.force)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {target} (config.pbtxt, {VERSION}/); serve it with: tritonserver --model-repository={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
