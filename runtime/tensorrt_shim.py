"""The one module that knows how TensorRT 8.5/8.6, 10.x and 11.x differ, plus pycuda context handling.

Build and runtime both go through here, so a new TensorRT generation means editing this file only.
Nothing imports ``tensorrt`` or ``pycuda`` at import time (a device without them can still import
``runtime``); callers pass the imported module ``trt`` around.

What differs (TensorRT Python API docs and the 8.x->10.x and 10.x->11.x migration guides):

=============  ==========================  ===========================  ==============================
               8.5 / 8.6                   10.x                         11.x
=============  ==========================  ===========================  ==============================
network flags  EXPLICIT_BATCH (the ONNX    none: explicit batch is      none: every network is strongly
               parser needs it)            the only mode, the flag is   typed (STRONGLY_TYPED is kept
                                           deprecated; STRONGLY_TYPED   but ignored)
                                           for the explicit path
precision      FP16 / INT8 builder flags   explicit path: strongly      types come from the graph; the
               (INT8 also for Q/DQ         typed, no flags ("use        FP16/INT8 flags are removed
               graphs)                     explicit quantization with
                                           strong typing"); flags only
                                           for calibrators and DLA
calibrators    IInt8EntropyCalibrator2,    same (deprecated since 10.1) removed: Q/DQ ONNX instead
               IInt8MinMaxCalibrator
=============  ==========================  ===========================  ==============================

Common to all three: ``set_memory_pool_limit(MemoryPoolType.WORKSPACE, bytes)``, optimisation
profiles, timing caches, ``build_serialized_network`` and the name-based I/O API
(``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``), which exists from 8.5 on.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .backends import INPUT_CHW, INPUT_NAME

TRT_HINT = ("TensorRT Python bindings not found: on Jetson they come with JetPack (python3-libnvinfer); "
            "on a desktop install them from NVIDIA's index (pip install tensorrt --extra-index-url "
            "https://pypi.nvidia.com)")
PYCUDA_HINT = ("pycuda not found: pip install pycuda (it compiles against the CUDA toolkit; "
               "on Jetson use JetPack's CUDA)")
CALIBRATORS_REMOVED = ("TensorRT {version} has no INT8 calibrators (removed in TensorRT 11): build from the Q/DQ "
                       "ONNX made by export/quantize.py instead (drop --calibrator)")


class MissingDependency(RuntimeError):
    """tensorrt and/or pycuda cannot be imported; the message is one line saying how to get them."""


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as e:
        raise MissingDependency(f"{TRT_HINT} [{e}]") from e
    return tensorrt


def import_pycuda() -> Any:
    """``pycuda.driver``, initialised. pycuda.autoinit is avoided on purpose: see ``primary_context``."""
    try:
        import pycuda.driver as cuda
    except ImportError as e:
        raise MissingDependency(f"{PYCUDA_HINT} [{e}]") from e
    cuda.init()
    return cuda


def require_gpu_stack() -> tuple[Any, Any]:
    """(tensorrt, pycuda.driver), or one MissingDependency naming everything that is missing."""
    found, missing = [], []
    for load in (import_tensorrt, import_pycuda):
        try:
            found.append(load())
        except MissingDependency as e:
            missing.append(str(e))
    if missing:
        raise MissingDependency("; ".join(missing))
    return found[0], found[1]


def parse_version(text: str) -> tuple[int, int]:
    """'8.6.1.6' -> (8, 6); '10.3.0' -> (10, 3)."""
    m = re.match(r"(\d+)\.(\d+)", str(text))
    if not m:
        raise ValueError(f"cannot parse a TensorRT version from {text!r}")
    return int(m.group(1)), int(m.group(2))


def version(trt: Any) -> tuple[int, int]:
    return parse_version(trt.__version__)


def strongly_typed_only(trt: Any) -> bool:
    """TensorRT 11 removed weak typing: no precision flags, no calibrators."""
    return version(trt)[0] >= 11


def has_calibrators(trt: Any) -> bool:
    return not strongly_typed_only(trt) and hasattr(trt, "IInt8EntropyCalibrator2")


# ---------------------------------------------------------------------------------------------- build


@dataclass(frozen=True)
class BuildMode:
    strongly_typed: bool
    flags: tuple[str, ...]  # BuilderFlag names for precision: () / ("FP16",) / ("INT8",)


def build_mode(trt: Any, precision: str, *, implicit_int8: bool = False, dla: bool = False) -> BuildMode:
    """How to get ``precision`` out of the ONNX graph on this TensorRT.

    ``precision`` is what the ONNX graph already holds (fp32, fp16 graph, int8 Q/DQ), except for
    ``implicit_int8``: classic calibration of the FP32 graph.
    """
    major = version(trt)[0]
    if major >= 11:
        if implicit_int8:
            raise RuntimeError(CALIBRATORS_REMOVED.format(version=trt.__version__))
        return BuildMode(True, ())  # the graph's types are the precision
    if implicit_int8:
        return BuildMode(False, ("INT8",))  # calibrators need weak typing
    if major >= 10 and not dla and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        # 10.x docs: "use explicit quantization with strong typing; precision-control build flags are not
        # required and should not be specified". An FP16 graph likewise runs exactly as typed.
        return BuildMode(True, ())
    # 8.5/8.6, and DLA on 10.x (whose docs describe DLA only with the FP16/INT8 flags): weak typing. A Q/DQ
    # graph still needs the INT8 flag there ("to enable any quantization operations, the INT8 flag must be
    # set"), and an FP16 graph the FP16 flag, or TensorRT would run its layers in FP32.
    return BuildMode(False, {"fp32": (), "fp16": ("FP16",), "int8": ("INT8",)}[precision])


def create_network(trt: Any, builder: Any, strongly_typed: bool) -> tuple[Any, int]:
    """The network definition and the creation flags used (recorded for the tests)."""
    flags = 0
    names = trt.NetworkDefinitionCreationFlag
    if version(trt)[0] < 10:
        flags |= 1 << int(names.EXPLICIT_BATCH)  # the ONNX parser needs explicit batch before 10.0
    elif strongly_typed and version(trt)[0] < 11:
        flags |= 1 << int(names.STRONGLY_TYPED)  # on 11 the flag is deprecated and ignored: leave it off
    return builder.create_network(flags), flags


def set_precision_flags(trt: Any, config: Any, mode: BuildMode) -> None:
    for name in mode.flags:
        if not hasattr(trt.BuilderFlag, name):
            raise RuntimeError(f"TensorRT {trt.__version__} has no BuilderFlag.{name} "
                               f"(strongly typed: the precision must come from the ONNX graph)")
        config.set_flag(getattr(trt.BuilderFlag, name))


def set_workspace(trt: Any, config: Any, workspace_bytes: int) -> None:
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))


def profile_shapes(batch: tuple[int, int, int]) -> dict[str, list[int]]:
    return {k: [int(b), *INPUT_CHW] for k, b in zip(("min", "opt", "max"), batch)}


def add_profile(builder: Any, config: Any, batch: tuple[int, int, int], name: str = INPUT_NAME) -> Any:
    shapes = profile_shapes(batch)
    profile = builder.create_optimization_profile()
    profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    return profile


def set_calibrator(config: Any, calibrator: Any, profile: Any) -> None:
    """Implicit INT8 (8.5-10.x). With a dynamic batch TensorRT calibrates at the calibration profile's OPT
    shape, so the calibrator must hand out batches of exactly that size."""
    config.int8_calibrator = calibrator
    config.set_calibration_profile(profile)


def use_dla(trt: Any, config: Any, core: int) -> None:
    """Whole network on DLA core ``core``; layers DLA cannot run fall back to the GPU."""
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = int(core)
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def load_timing_cache(config: Any, path: Path | None) -> Any:
    """Attach the timing cache at ``path`` (or a new one). A cache from another GPU or TensorRT is not
    trusted: TensorRT rejects it (ignore_mismatch=False) and we start afresh."""
    if path is None:
        return None
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, ignore_mismatch=False) and data:
        print(f"note: timing cache {path} does not match this GPU/TensorRT; starting a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def save_timing_cache(config: Any, path: Path | None) -> None:
    if path is None:
        return
    from core.files import atomic_write_bytes

    atomic_write_bytes(Path(path), bytes(memoryview(config.get_timing_cache().serialize())))


def parse_onnx(trt: Any, network: Any, logger: Any, onnx_path: Path) -> Any:
    """Parse with trt.OnnxParser; every parser error ends up in one RuntimeError."""
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file, so external weights are found
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or ["(no details)"]
        raise RuntimeError(f"{onnx_path}: TensorRT's ONNX parser failed:\n  " + "\n  ".join(errors))
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    if inputs != [INPUT_NAME]:
        raise RuntimeError(f"{onnx_path}: expected one input named {INPUT_NAME!r}, the graph has {inputs}")
    return parser


# -------------------------------------------------------------------------------------------- runtime


def primary_context(cuda: Any, device: int = 0) -> Any:
    """The device's *primary* CUDA context, retained (not created) explicitly.

    TensorRT works through the CUDA runtime API, which always uses the primary context. pycuda.autoinit
    and ``make_context`` create a separate context instead, so device pointers from pycuda would belong to a
    different context than TensorRT's. Sharing the primary context also plays well with other libraries
    in the process (ONNX Runtime's CUDA EP, cupy). Push it around each use (``active``); it is not left
    current, so any thread can use the backend.
    """
    return cuda.Device(device).retain_primary_context()


@contextmanager
def active(cuda: Any, ctx: Any) -> Iterator[None]:
    ctx.push()
    try:
        yield
    finally:
        cuda.Context.pop()


def gpu_info(cuda: Any, device: int = 0) -> dict[str, str]:
    dev = cuda.Device(device)
    major, minor = dev.compute_capability()
    return {"gpu_name": str(dev.name()), "compute_capability": f"{major}.{minor}"}


def io_names(trt: Any, engine: Any) -> tuple[list[str], list[str]]:
    """Input and output tensor names via the name-based API (8.5+)."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    return inputs, [n for n in names if n not in inputs]
