"""The serve command as a child process on free loopback ports: started, waited for, stopped. The load test
and the tests run the server this way, so they exercise the real command, signals included.

    with ServerProcess("model.onnx", log_path=Path("serve.log")) as server:
        client = TritonClient(server.url("grpc"), "grpc")
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from .client import TritonClient

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 240.0  # the first start also makes the stub's environment (pip)
STOP_TIMEOUT_S = 30.0


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports nothing listens on at the moment (the OS's choice, all held until all are chosen)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in sockets:
            s.bind((LOOPBACK, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class ServerProcess:
    """``python -m runtime.serve --model MODEL OPTIONS`` on loopback ports, ready when constructed."""

    def __init__(self, model: str | Path, *options: str, log_path: Path, start_timeout_s: float = START_TIMEOUT_S):
        self.ports = dict(zip(("http", "grpc", "metrics"), free_ports(3)))
        self.log_path = Path(log_path)
        command = [sys.executable, "-m", "runtime.serve", "--model", str(model), "--host", LOOPBACK,
                   *(f"--{name}-port={port}" for name, port in self.ports.items()), *options]
        with open(self.log_path, "wb") as log:  # the child keeps its own handle
            # its own session: a last-resort kill reaches tritonserver too
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        client = TritonClient(self.url("http"), "http")
        ready = client.wait_ready(start_timeout_s, alive=lambda: self.process.poll() is None)
        client.close()
        if not ready:
            self.stop()
            raise RuntimeError(f"the serve command did not become ready in {start_timeout_s:.0f} s (exit code "
                               f"{self.process.returncode}); its log, {self.log_path}, ends:\n{self.log_tail()}")

    def url(self, protocol: str) -> str:
        return f"{LOOPBACK}:{self.ports[protocol]}"

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGINT) -> int | None:
        """Stop it with ``sig`` and wait; the exit code (killed with its process group if it hangs)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

