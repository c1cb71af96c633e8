"""Client example: the faces of images from the serve command (or any Triton serving the ``faces`` model),
with nothing but tritonclient and numpy (pip install 'tritonclient[http,grpc]').

    python -m runtime.serve --model model.onnx                               # the server, elsewhere
    python scripts/triton_client.py photo.jpg                                # HTTP, faces detected on the server
    python scripts/triton_client.py photo.jpg --protocol grpc --url 127.0.0.1:8001
    python scripts/triton_client.py photo.jpg --box 40,60,200,230 --json faces.json

The request is the encoded file as sent (BYTES [1]) and, optionally, face boxes (FP32 [K,4], x0, y0, x1, y1
in image pixels). The answer: boxes [F,4], landmarks [F,68,2] in image pixels, and for models with heads
visibility [F,68] and face_score [F]. A rejected request raises InferenceServerException with the reason.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def faces(client, api, image: bytes, boxes: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One image through the ``faces`` model; ``api`` is tritonclient.http or tritonclient.grpc."""
    inputs = [api.InferInput("image", [1], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([image], dtype=np.object_))
    if boxes is not None:
        inputs.append(api.InferInput("boxes", list(boxes.shape), "FP32"))
        inputs[1].set_data_from_numpy(boxes.astype(np.float32))
    meta = client.get_model_metadata("faces")  # which outputs this model has (visibility, face_score or not)
    names = [o["name"] for o in meta["outputs"]] if isinstance(meta, dict) else [o.name for o in meta.outputs]
    result = client.infer("faces", inputs, outputs=[api.InferRequestedOutput(n) for n in names])
    return {n: result.as_numpy(n) for n in names}


def parse_box(text: str) -> list[float]:
    values = [float(v) for v in text.split(",")]
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"{text!r}: a box is x0,y0,x1,y1")
    return values


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", type=Path, help="JPEG or PNG files")
    ap.add_argument("--url", help="server host:port (default: 127.0.0.1:8000 for http, 127.0.0.1:8001 for grpc)")
    ap.add_argument("--protocol", choices=["http", "grpc"], default="http")
    ap.add_argument("--box", type=parse_box, action="append", help="a face box x0,y0,x1,y1 (repeat for more); "
                                                                    "without: the server detects the faces")
    ap.add_argument("--json", type=Path, help="write every result here")
    args = ap.parse_args(argv)
    if args.protocol == "http":
        import tritonclient.http as api
    else:
        import tritonclient.grpc as api
    from tritonclient.utils import InferenceServerException

    url = args.url or ("127.0.0.1:8000" if args.protocol == "http" else "127.0.0.1:8001")
    client = api.InferenceServerClient(url=url)
    boxes = None if args.box is None else np.array(args.box, np.float32)
    results = {}
    for path in args.images:
        try:
            out = faces(client, api, path.read_bytes(), boxes)
        except (OSError, InferenceServerException) as e:
            print(f"{path}: {e}", file=sys.stderr)
            return 1
        results[str(path)] = {k: v.tolist() for k, v in out.items()}
        print(f"{path}: {len(out['boxes'])} face(s)")
        for i, box in enumerate(out["boxes"]):
            extra = f", face score {out['face_score'][i]:.2f}" if "face_score" in out else ""
            print(f"  box {np.round(box, 1).tolist()}, nose tip {np.round(out['landmarks'][i][30], 1).tolist()}{extra}")
    if args.json:  # written whole, then renamed: never half a file
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(results))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
