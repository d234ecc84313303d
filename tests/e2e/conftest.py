"""Fixtures: a private redis-server and leanmqd per test, and the SDK agents."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, List

import pytest

from harness import REPO, Agents, Leanmqd, RedisServer

# Lines a test wants in the final summary (e.g. duplicate counts).
SUMMARY: List[str] = []


def _leanmqd_binary() -> str:
    path = os.environ.get("LEANMQD", "target/debug/leanmqd")
    p = Path(path)
    if not p.is_absolute():
        p = REPO / p
    if not (p.is_file() and os.access(p, os.X_OK)):
        pytest.exit(f"leanmqd binary not found or not executable: {p} (set LEANMQD)", returncode=2)
    return str(p)


@pytest.fixture(scope="session")
def leanmqd_bin() -> str:
    return _leanmqd_binary()


@pytest.fixture(scope="session")
def go_agent_bin(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = os.environ.get("E2E_GO_AGENT")
    if path:
        return path
    out = tmp_path_factory.mktemp("go-agent") / "e2e-agent"
    subprocess.run(
        ["go", "build", "-o", str(out), "./cmd/e2e-agent"],
        cwd=REPO / "clients" / "go",
        check=True,
        timeout=300,
    )
    return str(out)


@pytest.fixture(scope="session")
def node_agent_js() -> str:
    path = os.environ.get("E2E_NODE_AGENT") or str(REPO / "clients" / "node" / "dist" / "e2e-agent.js")
    if not Path(path).is_file():
        pytest.exit(f"node agent missing: {path} (run make -C clients/node setup)", returncode=2)
    return path


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="leanmq-e2e-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _failed(request: pytest.FixtureRequest) -> bool:
    rep = getattr(request.node, "rep_call", None)
    return rep is None or rep.failed


@pytest.fixture
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir)
    yield server
    server.stop()


@pytest.fixture
def broker(request: pytest.FixtureRequest, leanmqd_bin: str, redis_server: RedisServer, workdir: Path) -> Iterator[Leanmqd]:
    d = Leanmqd(leanmqd_bin, redis_server.url, workdir)
    yield d
    d.stop()
    if _failed(request) or os.environ.get("E2E_VERBOSE"):
        print(f"\n--- leanmqd log (tail) ---\n{d.log_tail(80)}")


@pytest.fixture
def agents(request: pytest.FixtureRequest, go_agent_bin: str, node_agent_js: str, broker: Leanmqd) -> Iterator[Agents]:
    # Depends on broker so agents stop before leanmqd and Redis do.
    a = Agents(go_agent_bin, node_agent_js)
    yield a
    a.stop_all()
    if _failed(request) or os.environ.get("E2E_VERBOSE"):
        for agent in a.started:
            print("\n" + agent.describe())


@pytest.fixture
def summary() -> List[str]:
    return SUMMARY


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if SUMMARY:
        terminalreporter.section("e2e notes")
        for line in SUMMARY:
            terminalreporter.write_line(line)
