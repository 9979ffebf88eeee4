"""SIGTERM ends a run the way Ctrl+C does: as an exception in the main thread, so every open MLflow run is
ended KILLED on the way out and the process exits 143 (Ctrl+C: 130)."""
from __future__ import annotations

import signal
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM (`ray job stop`, `kill`, a scheduler's preemption) in the main thread."""


received: int | None = None  # the last stop signal seen, for the exit status


def _on_sigterm(signum, frame):
    global received
    received = signum
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated()


def _on_sigint(signum, frame):
    global received
    received = signum
    raise KeyboardInterrupt()


def install() -> None:
    """Take SIGTERM (and SIGINT) in this process; again after `ray.init`, which installs its own SIGTERM
    handler (a bare `sys.exit`, which MLflow would record as FAILED)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        signal.signal(signal.SIGINT, _on_sigint)


def exit_status(default: int = 130) -> int:
    """128 + the signal that stopped the run (143 for SIGTERM, 130 for SIGINT)."""
    return 128 + received if received else default
