from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

# The e2e-agent tests fork subprocesses while this process runs gRPC threads
# (fake server + clients). With fork support on, grpcio's atfork handlers can
# abort the child before it execs (seen on Python 3.9, where subprocess
# forks instead of vfork). The tests never use gRPC across fork, so turn it
# off before grpc is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

sys.path.insert(0, str(Path(__file__).parent))

from fake_broker import FakeBroker, FakeServer  # noqa: E402
from real_broker import Redis  # noqa: E402


@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def broker(server: FakeServer) -> FakeBroker:
    return server.broker


# Real-broker modules: one temp dir and one redis-server per module.


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="leanmq-py-real-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def redis(workdir: Path) -> Iterator[Redis]:
    r = Redis(workdir)
    yield r
    r.stop()
