from __future__ import annotations

import os
import sys
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
