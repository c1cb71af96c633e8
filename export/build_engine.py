"""Build a TensorRT engine (FP32, FP16 or INT8) from the exported ONNX, with a JSON sidecar.

    python export/build_engine.py --onnx OUT.onnx --precision fp32|fp16|int8 --out OUT.engine

Given the FP32 ONNX and --precision fp16 or int8, the precision artifact is made first (next to OUT:
OUT-stem.fp16.onnx / OUT-stem.int8.onnx, via export/quantize.py; INT8 is calibrated on --calib-faces)
and the engine is built from it. Given an FP16 or Q/DQ INT8 ONNX, the engine is built from that.
  TensorRT 11: strongly typed network, no precision flags (precision comes from the graph).
  TensorRT 10.x: the same explicit path; 8.5/8.6: the same files with FP16/INT8 builder flags.
  --calibrator entropy|minmax: classic implicit INT8 calibration of the FP32 ONNX instead
  (TensorRT 8.5-10.x only; refused on 11).
Engines only run on the GPU model and TensorRT version they were built with: build on the target.
Exit status: 0 built, 1 build failed, 2 bad arguments or inputs, 3 TensorRT or pycuda not installed
(arguments are still checked and the precision artifact still made first).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from calibration.calibrator import CalibrationCacheError
from calibration.dataset import FRAMINGS
from core.data import DEFAULT_FACES
from core.files import sha256_file
from export.engine import DEFAULT_BATCH, DEFAULT_WORKSPACE_MB, build_engine, check_request, onnx_precision
from runtime.tensorrt_shim import CALIBRATORS_REMOVED, MissingDependency, import_tensorrt, strongly_typed_only

EXIT_FAILED, EXIT_USAGE, EXIT_NO_TENSORRT = 1, 2, 3


class UsageError(Exception):
    """Bad arguments or inputs (exit status 2)."""


def parse_batch(text: str) -> tuple[int, int, int]:
    try:
        batch = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected MIN,OPT,MAX integers, e.g. 1,4,8") from None
    if len(batch) != 3 or not 1 <= batch[0] <= batch[1] <= batch[2]:
        raise argparse.ArgumentTypeError(f"{text!r}: need MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX")
    return batch  # type: ignore[return-value]


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be a positive integer")
    return value


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="build_engine.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", type=Path, required=True, metavar="ONNX",
                    help="FP32 ONNX from export/export_onnx.py, or an FP16 / Q/DQ INT8 ONNX from export/quantize.py")
    ap.add_argument("--precision", choices=["fp32", "fp16", "int8"], required=True, help="engine precision")
    ap.add_argument("--out", type=Path, required=True, metavar="OUT", help="engine file to write (sidecar: OUT.json)")
    ap.add_argument("--calib-faces", type=Path, default=None, metavar="DIR",
                    help=f"CelebA-HQ-style folder for INT8 calibration (its train split; default {DEFAULT_FACES})")
    ap.add_argument("--calib-count", type=positive, default=None, metavar="N", help="calibration images (default 1024)")
    ap.add_argument("--calib-framing", choices=FRAMINGS, default="auto",
                    help="face boxes of the calibration crops (calibration.dataset.FRAMINGS; default: %(default)s = "
                         "the teacher's box for each labelled image, the detector's for the others)")
    ap.add_argument("--calibrator", choices=["entropy", "minmax"],
                    help="classic implicit INT8 calibration of the FP32 ONNX (TensorRT 8.5-10.x only): "
                         "IInt8EntropyCalibrator2 or IInt8MinMaxCalibrator; calibrates at the OPT batch")
    ap.add_argument("--calib-cache", type=Path, metavar="FILE",
                    help="with --calibrator: calibration cache to reuse or write; refused if it was made "
                         "for another ONNX, calibration set or calibrator")
    ap.add_argument("--batch", type=parse_batch, default=DEFAULT_BATCH, metavar="MIN,OPT,MAX",
                    help="optimisation profile MIN,OPT,MAX batch (default %s)" % ",".join(map(str, DEFAULT_BATCH)))
    ap.add_argument("--workspace", type=positive, default=DEFAULT_WORKSPACE_MB, metavar="MB",
                    help="builder workspace limit in MiB (default %(default)s)")
    ap.add_argument("--timing-cache", type=Path, metavar="FILE",
                    help="TensorRT timing cache to read and update (faster rebuilds)")
    ap.add_argument("--dla-core", type=int, metavar="N",
                    help="build for this DLA core with GPU fallback (Jetson Xavier/Orin; FP16 or INT8 only)")
    ap.add_argument("--force", action="store_true", help="overwrite OUT (and its sidecar)")
    return ap


def validate(args: argparse.Namespace) -> str:
    """Check everything that needs no TensorRT (export.engine.check_request, plus the calibration options);
    return the ONNX file's own precision."""
    try:
        source = check_request(args.onnx, args.out, args.precision, batch=args.batch, dla_core=args.dla_core,
                               calibrator_kind=args.calibrator, force=args.force, fp32_source_ok=True,
                               timing_cache=args.timing_cache, calib_cache=args.calib_cache)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise UsageError(str(e)) from e
    if args.calib_cache and not args.calibrator:
        raise UsageError("--calib-cache belongs to --calibrator (the Q/DQ path keeps its calibration in the ONNX)")
    needs_faces = args.precision == "int8" and source == "fp32"
    if needs_faces:
        faces = args.calib_faces or DEFAULT_FACES
        if not faces.is_dir():
            raise UsageError(f"INT8 from the FP32 ONNX needs calibration images: --calib-faces DIR "
                             f"({faces} is not a folder)")
        args.calib_faces = faces
    elif args.calib_faces or args.calib_count:
        raise UsageError("--calib-faces/--calib-count only apply to --precision int8 from the FP32 ONNX")
    return source


def calibration_set(args: argparse.Namespace):
    from calibration.dataset import DEFAULT_COUNT, build_calibration_set

    calib = build_calibration_set(args.calib_faces, args.calib_count or DEFAULT_COUNT, seed=0,
                                  framing=args.calib_framing)
    print(f"calibration set: {len(calib.paths)} images from {args.calib_faces} "
          f"({int(calib.occluded.sum())} occluded, {calib.framing}), key {calib.key[:12]}")
    return calib


def artifact_path(out: Path, precision: str) -> Path:
    return out.with_name(f"{out.stem}.{precision}.onnx")


def make_artifact(args: argparse.Namespace) -> Path:
    """The FP16 / Q/DQ INT8 ONNX made from the FP32 one, written next to OUT."""
    from export import quantize

    dst = artifact_path(args.out, args.precision)
    if args.precision == "fp16":
        quantize.make_fp16(args.onnx, dst)
    else:
        quantize.make_int8(args.onnx, dst, calibration_set(args), method="entropy")
    made = onnx_precision(dst)
    if made != args.precision:
        raise RuntimeError(f"{dst}: expected a {args.precision} ONNX, its metadata says {made}")
    print(f"wrote {dst}")
    return dst


def run(args: argparse.Namespace) -> int:
    source = validate(args)
    onnx_path, calib = args.onnx, None
    if source == "fp32" and args.precision != "fp32" and not args.calibrator:
        onnx_path = make_artifact(args)
    if args.calibrator:
        from calibration.calibrator import cache_key, read_cache

        try:  # refuse on TensorRT 11 before spending time on the calibration set
            trt = import_tensorrt()
        except MissingDependency:
            trt = None  # reported once the inputs are checked (build_engine)
        if trt is not None and strongly_typed_only(trt):
            raise UsageError(CALIBRATORS_REMOVED.format(version=trt.__version__))
        calib = calibration_set(args)
        if args.calib_cache:  # refuse a stale cache now, before the build
            read_cache(args.calib_cache, cache_key(calib.key, sha256_file(args.onnx), args.calibrator))
    sidecar = build_engine(onnx_path, args.out, args.precision, batch=args.batch, workspace_mb=args.workspace,
                           timing_cache=args.timing_cache, dla_core=args.dla_core, calibrator_kind=args.calibrator,
                           calib_set=calib, calib_cache=args.calib_cache, force=args.force)
    print(f"wrote {args.out} ({sidecar['precision']}, TensorRT {sidecar['tensorrt_version']}, "
          f"{sidecar['gpu_name']} sm{sidecar['compute_capability']}, {sidecar['build_time_s']} s) "
          f"and {args.out}.json")
    return 0


def cli() -> None:
    """Console-script entry point (pyproject.toml)."""
    sys.exit(main())


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except MissingDependency as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NO_TENSORRT
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (CalibrationCacheError, FileExistsError, ValueError) as e:  # inputs that cannot work
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as e:  # TensorRT refused the network or failed to build it
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
