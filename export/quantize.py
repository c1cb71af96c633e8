"""Precision artifacts from the FP32 ONNX, made with NVIDIA TensorRT Model Optimizer on the CPU.

    python export/quantize.py --onnx OUT.onnx --calib-faces ../shared/data/faces \
        --int8 OUT.int8.onnx --fp16 OUT.fp16.onnx

TensorRT 11 builds only strongly typed networks (no FP16/INT8 builder flags, no
calibrators), so precision must live in the graph: FP16 as an FP16 graph with
float32 inputs and outputs, INT8 as explicit QuantizeLinear/DequantizeLinear
pairs placed the way TensorRT fuses them. TensorRT 8.5-10.x builds the same
two files. Both run in ONNX Runtime on the CPU, which is how their accuracy is
checked here.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import logging
import tempfile
from pathlib import Path

import onnx

from calibration.dataset import DEFAULT_COUNT, FRAMINGS, CalibrationSet, build_calibration_set
from core.data import DEFAULT_FACES
from core.files import atomic_write_bytes, check_output_path, sha256_file


def read_metadata(model: onnx.ModelProto | str | Path) -> dict[str, str]:
    """An ONNX file's (or model's) metadata_props as a dict."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    merged = {p.key: p.value for p in model.metadata_props} | props
    del model.metadata_props[:]
    for key, value in merged.items():
        model.metadata_props.add(key=key, value=value)


def _finish(model: onnx.ModelProto, src: Path, dst: Path, props: dict[str, str]) -> Path:
    """Carry the FP32 file's metadata over, add the artifact's own, and write atomically."""
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    set_metadata(model, read_metadata(src) | {"source_onnx_sha256": sha256_file(src), "opset": str(opset)} | props)
    onnx.checker.check_model(model)
    atomic_write_bytes(Path(dst), model.SerializeToString())
    return Path(dst)


def _modelopt_version() -> str:
    from importlib.metadata import version

    return version("nvidia-modelopt")


def _quiet_modelopt() -> None:
    for name in ("modelopt", "modelopt.onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)


# Kept in float in the INT8 graph (see make_int8): op types whose inputs ModelOpt would otherwise quantize,
# the C2 conv + S1/S2/S3 + FC head, the stem conv and the first bottleneck's depthwise conv (which reads the
# stem's output); regular expressions matched at the start of ONNX node names. The stem is there because of
# export/int8_sweep.py and its weight counterpart: on the epoch-16 checkpoint the stem output alone made the
# heavy-occlusion gap (ΔNMSE at 50-60 % +0.84 -> -0.07), on the epoch-26 one the stem conv's weights
# did (+0.49 -> +0.30); docs/deployment.md.
# The visibility and face-score heads (train.model.HEAD_MODULES: vis_map, vis_points, visibility, face) are float
# too: tiny, and their probabilities are checked against the reference by runtime.verify. They read INT8 maps.
FLOAT_OP_TYPES = ["HardSwish", "HardSigmoid", "Mul", "GlobalAveragePool", "Flatten", "Sigmoid"]
FLOAT_NODES = [r"/features/features\.0/", r"/features/features\.1/block/block\.0/",
               r"/conv_c2/", r"/s1/", r"/s2/", r"/s3/", r"/fc/", r"/vis_map/", r"/vis_points/", r"/visibility/", r"/face/"]


def make_fp16(src: Path, dst: Path) -> Path:
    """FP16 graph (float32 input and output kept) via modelopt.onnx.autocast."""
    from modelopt.onnx.autocast import convert_to_f16

    _quiet_modelopt()
    model = convert_to_f16(onnx.load(str(src)), low_precision_type="fp16", keep_io_types=True)
    return _finish(model, src, dst, {"precision": "fp16", "modelopt": _modelopt_version()})


def make_int8(src: Path, dst: Path, calib_set: CalibrationSet, method: str = "entropy", verbose: bool = False) -> Path:
    """INT8 Q/DQ graph via modelopt.onnx.quantization.quantize, calibrated on ``calib_set`` on the CPU.

    Weights are quantized per output channel and activations per tensor, symmetric
    (zero points 0), as TensorRT requires. Every backbone convolution (SE included) and
    residual add is INT8 except the stem conv and the first depthwise conv; the pools, the SE gating
    multiplies, the hard-swish inputs and the regression head (C2 conv, S1/S2/S3, FC) stay in float:
    22 % of the multiply-adds, and quantizing them cost accuracy under heavy occlusion in our
    measurements (docs/deployment.md).
    """
    from modelopt.onnx.quantization import quantize

    if method not in ("entropy", "max"):
        raise ValueError(f"calibration method {method!r}: use entropy or max")
    _quiet_modelopt()
    # ONNX Runtime's histogram collector prints a line and a progress bar per calibration batch: kept off
    # the console unless asked for, and shown if quantization fails
    captured = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "int8.onnx"
        try:
            with contextlib.ExitStack() as quiet:
                if not verbose:
                    quiet.enter_context(contextlib.redirect_stdout(captured))
                    quiet.enter_context(contextlib.redirect_stderr(captured))
                quantize(str(src), quantize_mode="int8", calibration_data=calib_set.inputs, calibration_method=method,
                         calibration_eps=["cpu"], output_path=str(out), high_precision_dtype="fp32",
                         log_level="WARNING", op_types_to_exclude=FLOAT_OP_TYPES, nodes_to_exclude=FLOAT_NODES)
        except BaseException:
            sys.stderr.write(captured.getvalue())
            raise
        model = onnx.load(str(out))
    return _finish(model, src, dst, {
        "precision": "int8", "calibration_key": calib_set.key, "calibration_method": method,
        "calibration_images": str(len(calib_set.paths)), "calibration_framing": calib_set.framing,
        "modelopt": _modelopt_version(),
    })


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", type=Path, required=True, help="FP32 ONNX from export/export_onnx.py")
    ap.add_argument("--fp16", type=Path, help="write the FP16 graph here")
    ap.add_argument("--int8", type=Path, help="write the INT8 Q/DQ graph here (needs --calib-faces)")
    ap.add_argument("--calib-faces", type=Path, default=DEFAULT_FACES,
                    help="CelebA-HQ-style folder; calibration uses its train split (default: %(default)s)")
    ap.add_argument("--calib-count", type=int, default=DEFAULT_COUNT, help="calibration images (default: %(default)s)")
    ap.add_argument("--calib-framing", choices=FRAMINGS, default="auto",
                    help="where the calibration crops' face boxes come from: the teacher's labels, the shipped face "
                         "detector, or the whole image (default: %(default)s = the teacher's box for each labelled "
                         "image, the detector's for the others)")
    ap.add_argument("--calib-method", choices=["entropy", "max"], default="entropy",
                    help="activation range calibration (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="calibration image selection seed (default: %(default)s)")
    ap.add_argument("--verbose", action="store_true", help="let ModelOpt and ONNX Runtime print their progress")
    ap.add_argument("--force", action="store_true", help="replace existing --fp16 / --int8 files")
    args = ap.parse_args(argv)
    if not args.onnx.is_file():
        ap.error(f"{args.onnx}: no such ONNX file")
    precision = read_metadata(args.onnx).get("precision", "fp32")
    if precision != "fp32":
        ap.error(f"{args.onnx} is already {precision}: give the FP32 export")
    if not (args.fp16 or args.int8):
        ap.error("nothing to do: give --fp16 and/or --int8")
    for option, out in (("--fp16", args.fp16), ("--int8", args.int8)):
        if out is None:
            continue
        try:
            check_output_path(out)
        except ValueError as e:
            ap.error(str(e))
        if out.resolve() == args.onnx.resolve():
            ap.error(f"{out}: is the --onnx file; give {option} a file of its own")
        if out.exists() and not args.force:
            ap.error(f"{out} exists; pass --force to replace it")
    if args.fp16 and args.int8 and args.fp16.resolve() == args.int8.resolve():
        ap.error(f"{args.int8}: given as both --fp16 and --int8")
    if args.int8 and not args.calib_faces.is_dir():  # now, not after the FP16 graph is made
        ap.error(f"{args.calib_faces}: calibration folder not found (--calib-faces)")
    if args.fp16:
        print(f"wrote {make_fp16(args.onnx, args.fp16)}")
    if args.int8:
        calib = build_calibration_set(args.calib_faces, args.calib_count, args.seed, args.calib_framing)
        print(f"calibration set: {len(calib.paths)} images ({int(calib.occluded.sum())} occluded, "
              f"{calib.framing}), key {calib.key[:12]}")
        print(f"wrote {make_int8(args.onnx, args.int8, calib, args.calib_method, args.verbose)}")
    print(json.dumps({"fp16": str(args.fp16) if args.fp16 else None, "int8": str(args.int8) if args.int8 else None}))


if __name__ == "__main__":
    main()
