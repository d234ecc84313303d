"""Loss-ledger scenarios: network faults. Installed into chaos.py by install()."""
from typing import Callable, Dict

chaos = None  # the chaos module, set by install()

RUNNERS: Dict[str, Callable] = {}


def install(module) -> None:
    global chaos
    chaos = module
    for name, fn in RUNNERS.items():
        chaos.SCENARIOS.insert(chaos.SCENARIOS.index("soak"), name)
        chaos.RUNNERS[name] = fn
