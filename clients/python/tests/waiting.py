"""Polling for a condition in tests (state checks, not sleeps as synchronisation)."""
from __future__ import annotations

import time
from typing import Callable


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    """True as soon as ``cond()`` holds, False once ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
