"""Build a TensorRT engine from an ONNX file, with a JSON sidecar saying what it was built for.

Engines are tied to the TensorRT version and the GPU they were built on; the sidecar records both so
``runtime.tensorrt_backend`` can refuse an engine from elsewhere with a clear message. All TensorRT
version differences live in ``runtime.tensorrt_shim``.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.files import atomic_write_bytes, write_json, check_output_path, sha256_file
from export.quantize import read_metadata
from runtime import tensorrt_shim as shim
from runtime.tensorrt_backend import sidecar_path

if TYPE_CHECKING:
    from calibration.dataset import CalibrationSet

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_BATCH = (1, 1, 8)
DEFAULT_WORKSPACE_MB = 1024


def onnx_precision(path: str | Path) -> str:
    """The ONNX file's precision from its ``precision`` metadata; fp32 when absent (a plain export)."""
    precision = read_metadata(path).get("precision", "fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"{path}: unknown precision {precision!r} in its metadata (expected {', '.join(PRECISIONS)})")
    return precision


def check_batch(batch: tuple[int, int, int]) -> tuple[int, int, int]:
    batch = tuple(int(b) for b in batch)
    if len(batch) != 3 or not 1 <= batch[0] <= batch[1] <= batch[2]:
        raise ValueError(f"batch profile {batch}: need MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX")
    return batch  # type: ignore[return-value]


def check_request(onnx_path: str | Path, out_path: str | Path, precision: str, *,
                  batch: tuple[int, int, int] = DEFAULT_BATCH, dla_core: int | None = None,
                  calibrator_kind: str | None = None, force: bool = False, fp32_source_ok: bool = False,
                  timing_cache: str | Path | None = None, calib_cache: str | Path | None = None) -> str:
    """Every rule of an engine build that needs no TensorRT, in one place; returns the ONNX graph's precision.

    The engine's precision must be the graph's, except with ``calibrator_kind`` (classic INT8 calibration
    of the FP32 graph) and, with ``fp32_source_ok``, an FP32 graph the caller first turns into the FP16 /
    Q/DQ INT8 graph (export/build_engine.py does). Raises FileNotFoundError, FileExistsError or ValueError.
    """
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    check_batch(batch)
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use {', '.join(PRECISIONS)}")
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: no such ONNX file")
    check_output_path(out_path)
    if out_path.exists() and not force:
        raise FileExistsError(f"{out_path} exists; pass --force to overwrite it")
    if out_path.resolve() == onnx_path.resolve():
        raise ValueError("--out would overwrite the ONNX file")
    for option, cache in (("--timing-cache", timing_cache), ("--calib-cache", calib_cache)):
        if cache is not None:  # both are written after the build: check them before it
            check_output_path(cache)
            if Path(cache).resolve() in (onnx_path.resolve(), out_path.resolve()):
                raise ValueError(f"{option} {cache} is the ONNX file or OUT; give the cache a file of its own")
    try:
        graph = onnx_precision(onnx_path)
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"{onnx_path}: not a readable ONNX file ({e.__class__.__name__}: {e})") from e
    if calibrator_kind is not None:
        if precision != "int8" or graph != "fp32":
            raise ValueError(f"--calibrator calibrates the FP32 ONNX to INT8: use --precision int8 with the FP32 "
                             f"ONNX ({onnx_path} is {graph})")
    elif graph != precision and not (fp32_source_ok and graph == "fp32"):
        raise ValueError(f"{onnx_path} is a {graph} ONNX; for a {precision} engine give the FP32 ONNX from "
                         f"export/export_onnx.py (export/build_engine.py makes the {precision} graph from it)")
    if dla_core is not None and (dla_core < 0 or precision == "fp32"):
        raise ValueError("--dla-core needs a core number >= 0 and --precision fp16 or int8 (DLA runs no FP32)")
    return graph


def build_engine(onnx_path: str | Path, out_path: str | Path, precision: str, *,
                 batch: tuple[int, int, int] = DEFAULT_BATCH, workspace_mb: int = DEFAULT_WORKSPACE_MB,
                 timing_cache: str | Path | None = None, dla_core: int | None = None,
                 calibrator_kind: str | None = None, calib_set: CalibrationSet | None = None,
                 calib_cache: str | Path | None = None, force: bool = False) -> dict[str, Any]:
    """Build ``out_path`` from ``onnx_path`` and write it atomically with ``OUT.json``; returns the sidecar.

    ``precision`` must match the ONNX graph (an FP16 graph, a Q/DQ INT8 graph, or FP32), except with
    ``calibrator_kind``: classic INT8 calibration of the FP32 graph on TensorRT 8.5-10.x (check_request).
    Raises ``shim.MissingDependency`` when tensorrt/pycuda are absent.
    """
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    batch = check_batch(batch)
    graph_precision = check_request(onnx_path, out_path, precision, batch=batch, dla_core=dla_core,
                                    calibrator_kind=calibrator_kind, force=force, timing_cache=timing_cache,
                                    calib_cache=calib_cache)
    implicit = calibrator_kind is not None
    if implicit and calib_set is None:
        raise ValueError("--calibrator needs a calibration set")
    calibration_key = calib_set.key if implicit else read_metadata(onnx_path).get("calibration_key")
    onnx_sha = sha256_file(onnx_path)

    trt, cuda = shim.require_gpu_stack()
    mode = shim.build_mode(trt, graph_precision, implicit_int8=implicit, dla=dla_core is not None)
    timing_cache = Path(timing_cache) if timing_cache else None
    ctx = shim.primary_context(cuda)
    try:
        with shim.active(cuda, ctx):  # pycuda buffers (calibrator) and TensorRT share the primary context
            logger = trt.Logger(trt.Logger.WARNING)
            builder = trt.Builder(logger)
            network, network_flags = shim.create_network(trt, builder, mode.strongly_typed)
            shim.parse_onnx(trt, network, logger, onnx_path)
            config = builder.create_builder_config()
            shim.set_workspace(trt, config, workspace_mb << 20)
            shim.set_precision_flags(trt, config, mode)
            profile = shim.add_profile(builder, config, batch)
            if implicit:
                from calibration.calibrator import make_calibrator

                calibrator = make_calibrator(trt, calib_set, calibrator_kind, calib_cache, batch[1],
                                             onnx_sha256=onnx_sha, cuda=cuda)
                shim.set_calibrator(config, calibrator, profile)
            if dla_core is not None:
                shim.use_dla(trt, config, dla_core)
            shim.load_timing_cache(config, timing_cache)
            print(f"building {precision} engine from {onnx_path} with TensorRT {trt.__version__} ("
                  + ("strongly typed" if mode.strongly_typed else f"flags: {','.join(mode.flags) or 'none'}") + ")")
            start = time.perf_counter()
            plan = builder.build_serialized_network(network, config)
            build_time = time.perf_counter() - start
            if plan is None:
                raise RuntimeError(f"TensorRT could not build an engine from {onnx_path} (see its log above)")
            shim.save_timing_cache(config, timing_cache)
            gpu = shim.gpu_info(cuda)
    finally:
        ctx.detach()  # drop our reference; TensorRT's CUDA runtime holds its own
    sidecar = {
        "tensorrt_version": trt.__version__,
        **gpu,
        "precision": precision,
        "profile": {"input": shim.INPUT_NAME, **shim.profile_shapes(batch)},
        "onnx": str(onnx_path),
        "onnx_sha256": onnx_sha,
        "calibration_key": calibration_key,
        "calibrator": calibrator_kind,
        "strongly_typed": mode.strongly_typed,
        "builder_flags": list(mode.flags),
        "network_flags": network_flags,
        "dla_core": dla_core,
        "build_time_s": round(build_time, 2),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_bytes(out_path, bytes(memoryview(plan)))
    write_json(sidecar_path(out_path), sidecar, indent=2)
    return sidecar
