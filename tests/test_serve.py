"""The serve command behind Triton (PyTriton): both models over HTTP and gRPC against the in-process runtime,
bad requests, a taken port, SIGTERM; the client example and the load test's measuring loop.

One server (the real command, in a child process on free loopback ports) serves the whole module; the tests
that need it skip with the reason when PyTriton or tritonclient is missing or Triton's Python-backend
environment cannot be made here (runtime/serving/pytriton_fixes.py).
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from runtime.serving.models import (
    FacesModel,
    LandmarksModel,
    check_boxes,
    faces_tensors,
    landmarks_tensors,
)
from core.preprocess import decode_image
from tests.conftest import CHECKPOINT, FACES, ROOT, needs_data, split_rows

TOLERANCE_PX = 1e-4  # the bar: through Triton equal to the in-process runtime
PROTOCOLS = ("http", "grpc")


@pytest.fixture(scope="module")
def heads_model(tmp_path_factory):
    """MobileNet-L with the visibility and face-score heads, as ONNX (all three outputs): the committed
    network's weights where they fit; heads it lacks are seeded, the face score's set near 1 so that
    LandmarkDetector.detect keeps the faces YuNet finds."""
    torch = pytest.importorskip("torch")
    from export.export_onnx import export_onnx
    from train import checkpoint
    from train.model import MODELS, MobileNetL

    torch.manual_seed(0)
    model = MobileNetL(MODELS["mobilenet_l"]).eval()
    own = model.state_dict()
    fits = {k: v for k, v in checkpoint.load(CHECKPOINT)["model"].items()
            if k in own and own[k].shape == v.shape} if CHECKPOINT.exists() else {}
    model.load_state_dict(fits, strict=False)
    if "face.2.bias" not in fits:
        torch.nn.init.constant_(model.face[2].bias, 6.0)
    path = tmp_path_factory.mktemp("serve") / "heads.onnx"
    export_onnx(model, path, simplify=False)
    return path


@pytest.fixture(scope="module")
def detector(heads_model):
    from runtime.detector import LandmarkDetector

    return LandmarkDetector(heads_model)


@pytest.fixture(scope="module")
def server(heads_model, tmp_path_factory):
    for module in ("pytriton", "tritonclient.http", "tritonclient.grpc"):
        pytest.importorskip(module, reason=f"{module} not installed (pip install 'occlusion-landmarks[serve]')")
    from runtime.serving.process import ServerProcess
    from runtime.serving.pytriton_fixes import default_stub_env, ensure_stub_env

    try:  # made once per machine (pip); what a machine without the package index cannot do
        ensure_stub_env(default_stub_env())
    except RuntimeError as e:
        pytest.skip(f"PyTriton cannot start here: {e}")
    log = tmp_path_factory.mktemp("serve_log") / "serve.log"
    with ServerProcess(heads_model, "--instances=2", "--max-batch=8", log_path=log) as process:
        yield process


@pytest.fixture(scope="module")
def clients(server):
    from runtime.serving.client import TritonClient

    made = {p: TritonClient(server.url(p), p) for p in PROTOCOLS}
    yield made
    for c in made.values():
        c.close()


def test_faces_model(detector, tmp_path):
    """The served computation itself, without Triton: bytes in, the in-process result out."""
    model = FacesModel(detector)
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    png = cv2.imencode(".png", image)[1].tobytes()
    boxes = np.array([[20, 30, 80, 100], [-10, -10, 40, 40]], np.float32)  # the second is partly outside
    out = model(png, boxes)
    want = detector.predict_faces([image] * 2, [tuple(b) for b in boxes.tolist()])
    np.testing.assert_array_equal(out["landmarks"], np.array([f.landmarks for f in want]))
    np.testing.assert_allclose(out["face_score"], [f.score for f in want], atol=1e-6)
    assert out["boxes"].shape == (2, 4) and out["visibility"].shape == (2, 68)
    grey = cv2.imencode(".png", np.full((100, 120), 128, np.uint8))[1].tobytes()
    assert {k: v.shape for k, v in model(grey).items()} == {  # no face: zero rows, not an error
        "boxes": (0, 4), "landmarks": (0, 68, 2), "visibility": (0, 68), "face_score": (0,)}
    out = LandmarksModel(detector.backend)(np.zeros((3, 3, 256, 256), np.float32))
    assert {k: v.shape for k, v in out.items()} == {"landmarks": (3, 68, 2), "visibility": (3, 68),
                                                     "face_score": (3, 1)}


def test_request_checks_name_the_problem():
    with pytest.raises(ValueError, match="not a readable image"):
        decode_image(b"\xff\xd8\xff\xe0 truncated jpeg")
    with pytest.raises(ValueError, match="0 bytes"):
        decode_image(b"")
    png16 = cv2.imencode(".png", np.full((40, 50), 40000, np.uint16))[1].tobytes()
    assert decode_image(png16).shape == (40, 50, 3) and decode_image(png16).max() == 40000 >> 8
    assert check_boxes(np.array([[-5, -5, 10, 10]]), 100, 200) == [(-5.0, -5.0, 10.0, 10.0)]
    with pytest.raises(ValueError, match=r"face box 1 .* outside the 200x100 image"):
        check_boxes(np.array([[0, 0, 10, 10], [200, 10, 240, 50]]), 100, 200)
    for bad in ([10, 10, 5, 20], [0, 0, np.nan, 10]):
        with pytest.raises(ValueError, match="face box 0"):
            check_boxes(np.array([bad]), 100, 200)


def test_tensors_follow_the_model_outputs():
    _, paper = landmarks_tensors(("landmarks",))
    _, heads = landmarks_tensors(("landmarks", "visibility", "face_score"))
    assert [(t.name, t.shape) for t in paper] == [("landmarks", (68, 2))]
    assert [(t.name, t.shape) for t in heads][1:] == [("visibility", (68,)), ("face_score", (1,))]
    inputs, outputs = faces_tensors(("landmarks",))
    assert [t.name for t in outputs] == ["boxes", "landmarks"] and inputs[1].optional


def test_import_runtime_needs_no_triton():
    code = ("import sys, runtime, runtime.serve, runtime.loadtest, runtime.serving.client; "
            "assert not {'pytriton', 'tritonclient'} & set(sys.modules), 'Triton imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    help_text = subprocess.run([sys.executable, "-m", "runtime.serve", "--help"], capture_output=True, text=True,
                               cwd=ROOT, check=True).stdout
    assert "--max-queue-delay-us" in help_text and "SIGTERM" in help_text


def test_taken_port_is_refused_with_a_clear_message(heads_model):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "runtime.serve", "--model", str(heads_model),
                               f"--grpc-port={port}"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert f"grpc port {port} on 127.0.0.1 is taken" in proc.stderr and "--grpc-port" in proc.stderr


def test_test_images_through_the_faces_model_equal_in_process(clients, detector):
    if not (FACES / "splits.csv").exists():
        pytest.skip(f"real face data not found at {FACES}")
    test = [r["path"] for r in split_rows() if r["split"] == "test"]
    paths = [FACES / p for p in test[::len(test) // 4][:4]]
    for protocol, client in clients.items():
        for path in paths:
            data = path.read_bytes()
            got = client.faces(data)
            want = detector.detect(decode_image(data))
            assert len(want) >= 1 and len(got["landmarks"]) == len(want), path
            for name, value in (("boxes", [f.box for f in want]), ("landmarks", [f.landmarks for f in want]),
                                ("visibility", [f.visibility for f in want]), ("face_score", [f.score for f in want])):
                np.testing.assert_allclose(got[name], np.array(value, np.float32), rtol=0, atol=TOLERANCE_PX,
                                           err_msg=f"{protocol} {path.name} {name}")
            boxes = np.array([want[0].box], np.float32)  # given boxes: no detection
            np.testing.assert_allclose(client.faces(data, boxes)["landmarks"], got["landmarks"][:1], atol=TOLERANCE_PX)


def test_image_without_a_face_gets_zero_rows(clients):
    grey = cv2.imencode(".png", np.full((100, 120), 128, np.uint8))[1].tobytes()
    for client in clients.values():
        assert {k: v.shape for k, v in client.faces(grey).items()} == {
            "boxes": (0, 4), "landmarks": (0, 68, 2), "visibility": (0, 68), "face_score": (0,)}


def test_landmarks_model_batches_clients_and_equals_the_backend(clients, server, detector):
    rng = np.random.default_rng(1)
    crops = rng.uniform(-1, 1, (24, 3, 256, 256)).astype(np.float32)
    want = detector.backend.run(crops)
    from runtime.serving.client import TritonClient

    results, errors = {}, []

    def one_client(k: int) -> None:  # eight clients at once: the dynamic batcher merges their requests
        client = TritonClient(server.url(PROTOCOLS[k % 2]), PROTOCOLS[k % 2])
        try:
            for i in range(k, len(crops), 8):
                results[i] = client.landmarks(crops[i:i + 1])
        except Exception as e:  # reported below, with the others
            errors.append(e)
        finally:
            client.close()

    threads = [threading.Thread(target=one_client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == len(crops)
    for name in ("landmarks", "visibility", "face_score"):
        got = np.concatenate([results[i][name] for i in range(len(crops))])
        scale = 256 if name == "landmarks" else 1  # landmarks: crop pixels
        np.testing.assert_allclose(got * scale, want[name].reshape(got.shape) * scale, rtol=0, atol=TOLERANCE_PX)
    out = clients["grpc"].landmarks(crops[:5])  # one request of several crops
    np.testing.assert_allclose(out["landmarks"] * 256, want["landmarks"][:5] * 256, rtol=0, atol=TOLERANCE_PX)
    assert out["face_score"].shape == (5, 1)


@needs_data
def test_bad_requests_get_clear_errors_and_the_server_carries_on(clients):
    from tritonclient.utils import InferenceServerException

    from runtime.serving.client import error_message

    image = next((FACES / "cacd").glob("*.jpg")).read_bytes()
    height, width = decode_image(image).shape[:2]
    bad = {
        "wrong shape": (lambda c: c.landmarks(np.zeros((1, 3, 128, 128), np.float32)), "unexpected shape"),
        "wrong dtype": (lambda c: c.infer("landmarks", {"input": np.zeros((1, 3, 256, 256))}), "FP64"),
        "batch over the maximum": (lambda c: c.landmarks(np.zeros((9, 3, 256, 256), np.float32)), "batch-size"),
        "corrupt image": (lambda c: c.faces(image[:200]), "not a readable image"),
        "not an image": (lambda c: c.faces(b"GIF89a? no"), "not a readable image"),
        "box outside": (lambda c: c.faces(image, np.array([[width + 5, 0, width + 50, 40]])),
                        f"outside the {width}x{height} image"),
        "empty box": (lambda c: c.faces(image, np.array([[50, 50, 50, 90]])), "need finite x0 < x1"),
        "boxes of 5 numbers": (lambda c: c.infer("faces", {"image": np.array([image], object),
                                                           "boxes": np.zeros((1, 5), np.float32)}), "unexpected shape"),
    }
    for protocol, client in clients.items():
        for what, (call, message) in bad.items():
            with pytest.raises(InferenceServerException) as raised:
                call(client)
            assert message in error_message(raised.value), f"{protocol}, {what}: {raised.value}"
            assert client.faces(image)["landmarks"].shape[1:] == (68, 2), f"{protocol}: not serving after {what}"


@needs_data
def test_client_example_script(server, tmp_path):
    image = min((FACES / "taiwanese").glob("*.jpg"))
    out = tmp_path / "faces.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "triton_client.py"), str(image), "--protocol",
                           "grpc", "--url", server.url("grpc"), "--json", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "1 face(s)" in proc.stdout and "face score" in proc.stdout
    assert np.array(json.loads(out.read_text())[str(image)]["landmarks"]).shape == (1, 68, 2)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "triton_client.py"), str(image),
                           "--url", server.url("http"), "--box", f"{10**7},0,{10**7 + 9},9"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "outside" in proc.stderr


@needs_data
def test_load_test_measuring_loop(server, detector):
    from runtime.loadtest import faces_workload, inprocess_block, level_row, load_images, server_block

    work = faces_workload(detector, load_images(FACES, 6), max_batch=4)
    counter = itertools.count()
    served = server_block(server.url("http"), "http", work, concurrency=4, seconds=1.5, max_requests=40,
                          counter=counter)
    local = inprocess_block(work, 4, 0.5, counter)
    row = level_row(4, [served], [local])
    assert row["errors"] == 0 and 0 < row["requests"] <= 40 and row["server_faces_per_s"] > 0
    assert row["max_diff_px"] <= TOLERANCE_PX and row["p50_ms"] <= row["p99_ms"] and row["ratio"] > 0
    broken = server_block("127.0.0.1:1", "http", work, 1, 0.3, 3, counter)  # nothing listens: errors, no crash
    assert broken.errors == 3 and broken.messages


def test_stops_cleanly_on_sigterm(server, clients):
    """Last: it stops the module's server. Open connections would hold Triton for its exit timeout, and past
    it Triton exits without unloading the models (leaving copies of their files in /tmp): close them first."""
    for client in clients.values():
        client.close()
    pgid = os.getpgid(server.process.pid)
    start = time.monotonic()
    assert server.stop(signal.SIGTERM) == 0
    assert time.monotonic() - start < 10  # serve.EXIT_TIMEOUT_S: nothing kept it waiting
    assert "stopped (SIGTERM)" in server.log_tail()
    end = time.monotonic() + 10  # tritonserver and the stubs go with it (their helpers a moment later)
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    left = subprocess.run(["ps", "-o", "pid,args", "-g", str(pgid)], capture_output=True, text=True).stdout
    pytest.fail(f"processes left behind:\n{left}")


def test_the_stub_handshake_waits_for_a_socket_that_is_bound_but_not_yet_listening(tmp_path):
    """PyTriton's second instance asks the first for its config over a Unix socket as soon as the socket's file
    exists; between bind and listen that is refused. The stubs get a copy that retries (pytriton_fixes)."""
    pytriton = pytest.importorskip("pytriton", reason="pytriton not installed (pip install 'occlusion-landmarks[serve]')")
    from pathlib import Path

    from runtime.serving.pytriton_fixes import patient_handshake, patient_handshake_source

    def handshake(source: bytes):
        module: dict = {}
        exec(compile(source, "communication.py", "exec"), module)
        return module["get_config_from_handshake_server"]

    original = (Path(pytriton.__file__).parent / "proxy" / "communication.py").read_bytes()
    path = tmp_path / "config.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))  # bound, not yet listening: the moment the race hits
    with pytest.raises(ConnectionRefusedError):
        handshake(original)(path)

    def listen_late():
        time.sleep(0.3)
        server.listen(1)
        conn, _ = server.accept()
        conn.recv(64)
        payload = json.dumps({"authkey": "x"}).encode()
        conn.sendall(len(payload).to_bytes(4, "big") + payload)
        conn.close()

    threading.Thread(target=listen_late, daemon=True).start()
    assert handshake(patient_handshake_source(original))(path) == {"authkey": "x"}
    server.close()
    # the files PyTriton hands Triton for the stubs carry the patch
    from types import SimpleNamespace

    from pytriton.models.model import Model

    patient_handshake()
    files = Model.get_proxy_model_files(SimpleNamespace(model_version=1, SCRIPT_FILES_TO_COPY=Model.SCRIPT_FILES_TO_COPY))
    assert b"patched (occlusion-landmarks)" in files["file:1/communication.py"]


def test_response_checks_do_not_format_the_arrays_but_still_refuse_bad_ones():
    """PyTriton formats every output array for a debug message that is off (a third of the serving CPU);
    pytriton_fixes keeps its checks without that message."""
    pytest.importorskip("pytriton", reason="pytriton not installed (pip install 'occlusion-landmarks[serve]')")
    from types import SimpleNamespace

    from pytriton.proxy import validators

    from runtime.serving.pytriton_fixes import lazy_response_log

    class NoText(np.ndarray):
        def __format__(self, spec):
            raise AssertionError("an output array was formatted as text")

    config = SimpleNamespace(model_name="landmarks", batching=True,
                             outputs=[SimpleNamespace(name="landmarks", dtype=np.float32, shape=(68, 2))])
    check = validators.TritonResultsValidator(config, strict=True)
    good = np.zeros((1, 68, 2), np.float32).view(NoText)
    with pytest.raises(AssertionError, match="formatted as text"):
        check.validate_responses([{}], [{"landmarks": good}])  # PyTriton's own: builds the message
    lazy_response_log()
    check.validate_responses([{}], [{"landmarks": good}])
    for bad, problem in ((good.astype(np.float64), "invalid type"), (good[:, :5, :1], "invalid shapes"),
                         ([1.0], "numpy arrays")):
        with pytest.raises(ValueError, match=problem):
            check.validate_responses([{}], [{"landmarks": bad}])
    with pytest.raises(ValueError, match="does not match number of requests"):
        check.validate_responses([{}, {}], [{"landmarks": good}])
