"""Shared fixtures of the Python tests: where the binary and the test data are, the Python gRPC
stubs generated from proto/ (with grpc_tools.protoc, into a temporary directory), and `tandem serve`
processes on free loopback ports.

Env: TANDEM_BIN (default <repo>/build/tandem), TANDEM_TESTDATA (default <repo>/../shared/testdata).
"""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTDATA = Path(os.environ.get("TANDEM_TESTDATA",
                               os.environ.get("TANDEM_TESTDATA_DIR", REPO.parent / "shared" / "testdata")))
STARTUP_GUARD_S = 120  # hang guard for a server start; a healthy start takes a second or two


def tandem_bin():
    path = Path(os.environ.get("TANDEM_BIN", REPO / "build" / "tandem"))
    assert path.exists(), f"tandem binary not found at {path} (set TANDEM_BIN)"
    return str(path)


@pytest.fixture(scope="session")
def testdata():
    assert TESTDATA.is_dir(), f"test data not found at {TESTDATA} (set TANDEM_TESTDATA)"
    return TESTDATA


@pytest.fixture(scope="session")
def stubs(tmp_path_factory):
    """The generated modules: stubs.gen (generation_pb2), stubs.gen_grpc, stubs.admin, stubs.admin_grpc."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("stubs")
    proto_root = REPO / "proto"
    files = sorted(str(p.relative_to(proto_root)) for p in (proto_root / "tandem" / "v1").glob("*.proto"))
    assert files, f"no .proto files under {proto_root}"
    rc = protoc.main(["protoc", f"-I{proto_root}", f"--python_out={out}", f"--grpc_python_out={out}",
                      *files])
    assert rc == 0, f"grpc_tools.protoc failed on {files}"
    sys.path.insert(0, str(out))
    import importlib

    class Stubs:
        gen = importlib.import_module("tandem.v1.generation_pb2")
        gen_grpc = importlib.import_module("tandem.v1.generation_pb2_grpc")
        admin = importlib.import_module("tandem.v1.admin_pb2")
        admin_grpc = importlib.import_module("tandem.v1.admin_pb2_grpc")

    return Stubs


class Server:
    """A running `tandem serve`; stderr goes to a log file that start() reads for the bound port."""

    def __init__(self, args, log_path):
        self.args = args
        self.log_path = Path(log_path)
        self.proc = None
        self.address = None

    def start(self):
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + STARTUP_GUARD_S
        while time.monotonic() < deadline:
            m = re.search(r"listening on (\S+:\d+)", self.log_text())
            if m:
                self.address = m.group(1)
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"tandem serve exited with {self.proc.returncode}:\n{self.log_text()}")
            time.sleep(0.05)
        raise AssertionError(f"tandem serve did not start:\n{self.log_text()}")

    def log_text(self):
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout=60):
        """SIGTERM, then wait; returns the exit code (kills and fails on a hang)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"tandem serve ignored SIGTERM:\n{self.log_text()}")
        finally:
            self.log.close()


@pytest.fixture(scope="session")
def start_server(tmp_path_factory):
    """start_server(config_text=None, config_path=None, model=None) -> Server on 127.0.0.1:<free>."""
    servers = []

    def start(config_text=None, config_path=None, model=None, extra=()):
        d = tmp_path_factory.mktemp("serve")
        if config_text is not None:
            config_path = d / "config.yaml"
            config_path.write_text(config_text)
        args = [tandem_bin(), "serve", "--config", str(config_path), "--listen", "127.0.0.1:0"]
        if model is not None:
            args += ["--model", str(model)]
        server = Server(args + list(extra), d / "serve.log")
        servers.append(server)
        return server.start()

    yield start
    for s in servers:
        if s.proc is not None and s.proc.poll() is None:
            s.terminate()
