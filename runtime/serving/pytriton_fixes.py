"""What PyTriton (0.5.7) needs to serve correctly with this interpreter; all seen on this project's machine.

PyTriton runs our models behind Triton's Python-backend stub, and two things break that stub outside NVIDIA's
containers:

1. The stub is linked against ``libpython3.X.so`` and loads the first one the dynamic loader finds. When the
   interpreter is not the system's (a pyenv or conda build), that is the system's library while the standard
   library on sys.path is the interpreter's own; they disagree and model loading fails with
   ``'_thread.RLock' object has no attribute '_recursion_count'``. Fix: the interpreter's own library folder
   first on the Triton process's LD_LIBRARY_PATH.
2. The stub's NumPy bindings predate NumPy 2 and misread its arrays without an error: inputs arrive as
   zeros and outputs empty. (PyTriton 0.6 and 0.7 require numpy<2, which the project's OpenCV, needing
   NumPy 2, rules out; 0.5.7 does not require it, but its stub is no different.) Fix: with NumPy 2 here, the
   stub runs in a small virtual environment of its own holding numpy<2 and pyzmq, all that PyTriton's proxy
   imports there. It is made once, with pip, and reused.

With several instances of a model, the first one's stub opens a Unix socket that hands the others their
configuration; the others connect as soon as the socket's file exists. On a loaded machine one of them can
connect between the socket's bind and listen, gets "Connection refused", and the model fails to load (seen in
this project's CI). Fix: the stubs' copy of PyTriton's communication module retries the connection and waits
up to HANDSHAKE_TIMEOUT_S instead of 1 s.

And PyTriton cannot hand an empty multi-dimensional array (a ``faces`` answer for an image without a face:
boxes [0, 4]) to Triton: its shared-memory copy casts the array's memoryview, which Python refuses for zero
sizes ("cannot cast view with zeros in shape or strides"). Fix: such arrays go as an empty byte string, which
PyTriton's reader turns back into the empty array. (An empty array sent *to* a model fails the same way in
the stub, which this process cannot patch: clients leave out an optional input rather than send it empty.)

And PyTriton checks each response of our callables with ``LOGGER.debug(f"{name}: {value} ...")``: the f-string
is built whether or not debug logging is on, so NumPy formats every output array as text on every request
(1.1 ms for one crop's landmarks and visibility, about a third of the serving process's CPU per crop, found
with py-spy). Fix: the same checks without that message unless its logger is enabled for DEBUG.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np

STUB_REQUIREMENTS = ("numpy<2", "pyzmq>=23")
HANDSHAKE_TIMEOUT_S = 60.0
_HANDSHAKE_SIGNATURE = "def get_config_from_handshake_server(socket_path: pathlib.Path, timeout_s: float = 1.0)"
_HANDSHAKE_CONNECT = "        sock.connect(socket_path.as_posix())\n"
_HANDSHAKE_RETRY = """        while True:  # patched (occlusion-landmarks): the socket may be bound but not yet listening
            try:
                sock.connect(socket_path.as_posix())
                break
            except ConnectionRefusedError:
                if time.time() >= should_stop_before_s:
                    raise
                time.sleep(0.01)
"""


def default_stub_env() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "occlusion-landmarks" / f"triton-stub-py{sys.version_info[0]}.{sys.version_info[1]}"


def python_libdir() -> Path | None:
    """The folder of this interpreter's shared libpython, or None for a statically linked interpreter."""
    libdir, library = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    if not (sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir and library):
        return None
    return Path(libdir) if (Path(libdir) / library).exists() else None


def stub_env_numpy(env: Path) -> str | None:
    """The NumPy version the environment's Python imports together with zmq; None when either import fails."""
    python = env / "bin" / "python"
    if not python.exists():
        return None
    done = subprocess.run([str(python), "-c", "import numpy, zmq; print(numpy.__version__)"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def make_stub_env(env: Path) -> None:
    """Create the stub's environment at ``env`` (built in a temporary folder, renamed when complete)."""
    env.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{env.name}.", dir=env.parent))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True, capture_output=True, text=True)
        subprocess.run([str(tmp / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        *STUB_REQUIREMENTS], check=True, capture_output=True, text=True)
        os.rename(tmp, env)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"cannot make Triton's Python-backend environment in {env}: `{' '.join(e.cmd)}` failed:\n"
                           f"{(e.stderr or e.stdout or '').strip()[-2000:]}\n(it needs the package index once: "
                           f"{', '.join(STUB_REQUIREMENTS)}; or make it by hand and pass --stub-env)") from None
    except OSError:
        if stub_env_numpy(env) is None:  # not another process that finished first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prepare(env: Path, log=print) -> Path | None:
    """Set this process up so the Triton that PyTriton starts serves correctly; the stub's environment, or
    None when this environment serves as it is. Call before PyTriton starts Triton (which inherits os.environ).
    """
    allow_empty_outputs()
    patient_handshake()
    lazy_response_log()
    libdir = python_libdir()
    if libdir is not None:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libdir), os.environ.get("LD_LIBRARY_PATH"))
                                                        if p)
    if int(np.__version__.split(".")[0]) < 2:
        return None  # PyTriton's own choice, this environment, works
    ensure_stub_env(env, log)
    from pytriton.server import triton_server

    # PyTriton runs the stub with the Python of the environment this function names (its bin/ first on PATH)
    if not hasattr(triton_server, "get_triton_python_backend_python_env"):
        raise RuntimeError("this nvidia-pytriton has no get_triton_python_backend_python_env to point at the "
                           "stub's environment: install the version pyproject.toml's serve extra names")
    triton_server.get_triton_python_backend_python_env = lambda: env
    return env


def ensure_stub_env(env: Path, log=print) -> None:
    """Make the stub's environment at ``env`` unless it is there; RuntimeError when it cannot be made or is wrong."""
    version = stub_env_numpy(env)
    if version is None:
        log(f"making Triton's Python-backend environment in {env} (once: {', '.join(STUB_REQUIREMENTS)}; "
            f"NumPy {np.__version__} here is one its stub cannot read)")
        make_stub_env(env)
        version = stub_env_numpy(env)
    if version is None or int(version.split(".")[0]) >= 2:
        raise RuntimeError(f"{env}: Triton's Python-backend environment must import numpy<2 and zmq; it has "
                           f"numpy {version or 'missing'}: delete the folder to have it made again")


def patient_handshake_source(source: bytes) -> bytes:
    """PyTriton's communication.py with the handshake retrying (unchanged when its code is not the one known)."""
    text = source.decode()
    if _HANDSHAKE_SIGNATURE not in text or text.count(_HANDSHAKE_CONNECT) != 1:
        return source
    text = text.replace(_HANDSHAKE_SIGNATURE, _HANDSHAKE_SIGNATURE.replace("1.0", str(HANDSHAKE_TIMEOUT_S)))
    return text.replace(_HANDSHAKE_CONNECT, _HANDSHAKE_RETRY).encode()


def patient_handshake() -> None:
    """Hand the stubs the patched communication.py, whichever way PyTriton ships its proxy files to Triton."""
    from pytriton.models.model import Model

    if getattr(Model, "_patient_handshake", False):
        return
    files, generate = Model.get_proxy_model_files, Model.generate_model

    def get_proxy_model_files(self):
        return {k: patient_handshake_source(v) if k.endswith("/communication.py") else v for k, v in files(self).items()}

    def generate_model(self, model_repository):
        generate(self, model_repository)
        copied = Path(model_repository) / self.model_name / str(self.model_version) / "communication.py"
        if copied.exists():
            copied.write_bytes(patient_handshake_source(copied.read_bytes()))

    Model.get_proxy_model_files, Model.generate_model = get_proxy_model_files, generate_model
    Model._patient_handshake = True


def allow_empty_outputs() -> None:
    """Let PyTriton send zero-size outputs: their data frame goes as b"" instead of an uncastable memoryview."""
    from pytriton.proxy import data

    serialize = data.serialize_numpy_with_struct_header

    def serialize_allowing_empty(tensor):
        frames = serialize(tensor)
        return frames if tensor.size or tensor.dtype.hasobject else [frames[0], b""]

    data.serialize_numpy_with_struct_header = serialize_allowing_empty


def lazy_response_log() -> None:
    """PyTriton's response checks, formatting the responses for its debug log only when that log is on."""
    from pytriton.proxy import validators

    if getattr(validators, "_lazy_response_log", False):
        return
    validate = validators._validate_outputs

    def validate_outputs(model_config, model_outputs, outputs, strict, requests_number):
        if validators.LOGGER.isEnabledFor(logging.DEBUG) or not isinstance(outputs, list) \
                or len(outputs) != requests_number or not all(isinstance(r, dict) for r in outputs):
            return validate(model_config, model_outputs, outputs, strict, requests_number)  # its own errors
        for response in outputs:
            for name, value in response.items():
                validators._validate_output_data(model_config, name, value)
                if strict:
                    validators._validate_output_dtype_and_shape(model_config, model_outputs, name, value)

    validators._validate_outputs = validate_outputs
    validators._lazy_response_log = True
