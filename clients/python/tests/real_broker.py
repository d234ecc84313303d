"""A real leanmqd (and a private redis-server) for the auth and TLS tests.

The leanmqd binary is ``$LEANMQD`` or the repository's
``target/debug/leanmqd``; tests using it are skipped when it (or
redis-server, or openssl for TLS) is missing. Nothing here builds leanmqd.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import List, Optional, Sequence

import grpc

REPO = Path(__file__).resolve().parents[3]

#: Three tokens: one may send to and subscribe to /sdk/>, one may only send
#: to /other/>, and one may also administer /sdk/> (the Admin tests).
SDK_TOKEN = "sdk-token-3f9c1b7e"
SEND_ONLY_TOKEN = "send-only-token-8d2a4c6f"
ADMIN_TOKEN = "admin-token-5e1d9a27"


def leanmqd_binary() -> Optional[str]:
    p = Path(os.environ.get("LEANMQD", REPO / "target" / "debug" / "leanmqd"))
    if not p.is_absolute():
        p = REPO / p
    return str(p) if p.is_file() and os.access(p, os.X_OK) else None


def missing_tools(*tools: str) -> List[str]:
    missing = [t for t in tools if shutil.which(t) is None]
    if leanmqd_binary() is None:
        missing.append("leanmqd (set LEANMQD or build target/debug/leanmqd)")
    return missing


def token_hash(token: str) -> str:
    """What ``leanmqd hash-token`` prints for ``token``."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def write_tokens_file(path: Path) -> Path:
    path.write_text(
        f"""[[tokens]]
name = "sdk"
hash = "{token_hash(SDK_TOKEN)}"
send = ["/sdk/>"]
subscribe = ["/sdk/>"]

[[tokens]]
name = "send-only"
hash = "{token_hash(SEND_ONLY_TOKEN)}"
send = ["/other/>"]

[[tokens]]
name = "admin"
hash = "{token_hash(ADMIN_TOKEN)}"
send = ["/sdk/>"]
subscribe = ["/sdk/>"]
admin = ["/sdk/>"]
"""
    )
    return path


def self_signed_cert(directory: Path) -> "tuple[Path, Path]":
    """A throwaway certificate for localhost and 127.0.0.1, and its key."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-keyout", str(key), "-out", str(cert),
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-days", "1",
        ],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=60,
    )
    return cert, key


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class Redis:
    """A redis-server of our own on a free loopback port, no persistence."""

    def __init__(self, workdir: Path) -> None:
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None
        for _ in range(5):  # the port can be taken between free_port() and bind
            self.port = free_port()
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(workdir),
                 "--save", "", "--appendonly", "no"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + 10
            while self.proc.poll() is None and time.monotonic() < deadline:
                if self.cli("PING") == "PONG":
                    return
                time.sleep(0.05)
            _stop(self.proc)
        raise RuntimeError("could not start redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def cli(self, *args: str) -> str:
        r = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=10)
        return r.stdout.strip()

    def pending(self, stream: str, group: str) -> int:
        """Entries of ``stream`` delivered to ``group`` and not acked."""
        out = self.cli("XPENDING", stream, group).splitlines()
        return int(out[0]) if out and out[0].isdigit() else -1

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


def _serving(target: str, credentials: Optional[grpc.ChannelCredentials]) -> bool:
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    try:
        # grpc.health.v1 Check for the whole server; SERVING is b"\x08\x01". Needs no token.
        return channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=0.5) == b"\x08\x01"
    except grpc.RpcError:
        return False
    finally:
        channel.close()


class Leanmqd:
    """leanmqd on a free loopback port; ``credentials`` are used for its health check."""

    def __init__(
        self,
        workdir: Path,
        redis_url: str,
        args: Sequence[str] = (),
        credentials: Optional[grpc.ChannelCredentials] = None,
        port: Optional[int] = None,
    ) -> None:
        """``port``: listen there (a restart on the same address) instead of a free one."""
        binary = leanmqd_binary()
        assert binary is not None
        self.log = workdir / "leanmqd.log"
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0
        last = ""
        for _ in range(5):
            self.port = port or free_port()
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [binary, "--listen", self.target, "--redis-url", redis_url, *args],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            deadline = time.monotonic() + 20
            while self.proc.poll() is None and time.monotonic() < deadline:
                if _serving(self.target, credentials):
                    return
                time.sleep(0.05)
            last = self.log.read_text(errors="replace")[-2000:]
            _stop(self.proc)
        raise RuntimeError(f"leanmqd did not start serving:\n{last}")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
