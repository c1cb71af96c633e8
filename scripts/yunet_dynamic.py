"""Make the shipped YuNet file (runtime/models/yunet/yunet_n_dynamic.onnx) from the authors' 640x640 one.

    python scripts/yunet_dynamic.py [--source ../shared/models/yunet/yunet_n_640_640.onnx] [--force]

The authors' file declares a fixed 1x3x640x640 input. OpenCV's FaceDetectorYN reshapes it to any frame size,
ONNX Runtime does not: it checks the declared shape. Its graph is fully convolutional (its Reshapes use -1,
its Resizes fixed scales), so the only change is the declared shapes: input height and width and the
outputs' anchor counts become named dimensions. Weights and nodes are untouched (checked below, and by
tests/test_faces.py against the source file). Apache-2.0 asks modified files to say so: the model's
doc_string does, and runtime/models/yunet/README.md.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import onnx

from core.files import atomic_write_bytes, sha256_file
from runtime.faces import YUNET_MODEL

SOURCE_SHA256 = "25a606a145a5b6d7271ae138fbd00eba91dad8b83222ae3f2c7ecd0f4a7b0e31"
DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "models" / "yunet" / "yunet_n_640_640.onnx"
NOTICE = ("Modified from yunet_n_640_640.onnx (ShiqiYu/libfacedetection.train, Apache-2.0): input height and "
          "width and the outputs' anchor counts declared as named dimensions; weights and nodes unchanged.")


def make_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with input [1, 3, height, width] and outputs [1, anchors, k]."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"  # setting dim_param clears dim_value (oneof)
    for out in model.graph.output:
        out.type.tensor_type.shape.dim[1].dim_param = "anchors"
    del model.graph.value_info[:]  # intermediate shapes inferred at 640x640 would contradict other sizes
    model.doc_string = NOTICE
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the authors' yunet_n_640_640.onnx")
    ap.add_argument("--out", type=Path, default=YUNET_MODEL, help="(default: %(default)s)")
    ap.add_argument("--force", action="store_true", help="replace an existing --out")
    args = ap.parse_args(argv)
    data = args.source.read_bytes()
    if hashlib.sha256(data).hexdigest() != SOURCE_SHA256:
        sys.exit(f"{args.source}: not the authors' yunet_n_640_640.onnx (sha256 differs from {SOURCE_SHA256})")
    if args.out.exists() and not args.force:
        sys.exit(f"{args.out} exists: pass --force to replace it")
    source = onnx.load_from_string(data)
    model = make_dynamic(onnx.load_from_string(data))
    assert list(model.graph.node) == list(source.graph.node) and list(model.graph.initializer) == list(
        source.graph.initializer), "only declared shapes may change"
    onnx.checker.check_model(model)
    atomic_write_bytes(args.out, model.SerializeToString())
    print(f"wrote {args.out} (sha256 {sha256_file(args.out)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
