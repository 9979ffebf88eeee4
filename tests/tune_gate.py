"""`python -m tests.tune_gate GATE_DIR FREE -- <pipeline CLI args>`: the pipeline CLI, with campaign trials held
at a gate that a test controls, so the test (not the machine's speed) decides when a campaign is mid-way.

The first FREE trials to start run as usual. Every later trial writes GATE_DIR/held-<slot> and waits, without
training, until GATE_DIR/release exists. Each trial also writes GATE_DIR/slot-<n> holding its Tune trial id.
Trials run in Ray worker processes; the wrapper travels to them by value (they need not import `tests`).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def claim_slot(gate: Path, trial_id: str) -> int:
    """The lowest free slot number, taken atomically (O_EXCL), with the trial id written into it."""
    slot = 0
    while True:
        try:
            fd = os.open(gate / f"slot-{slot}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            slot += 1
            continue
        os.write(fd, trial_id.encode())
        os.close(fd)
        return slot


def gated(module: str, name: str, gate: str, free: int):
    """The trial function `module.name`, held at the gate from the (free + 1)-th trial on."""
    def trial(config, **kwargs):
        import importlib

        from ray import tune

        slot = claim_slot(Path(gate), tune.get_context().get_trial_id())
        if slot >= free:
            (Path(gate) / f"held-{slot}").touch()
            while not (Path(gate) / "release").exists():
                time.sleep(0.05)
        # The worker imports the stage module afresh: its attribute is the real trial function.
        return getattr(importlib.import_module(module), name)(config, **kwargs)

    trial.__name__ = name  # Tune names trials and checks restores by the trainable's name
    return trial


def main(argv: list[str]) -> int:
    import pipeline.stages.tune as tune_stage
    from pipeline.cli import main as cli_main

    gate, free, rest = argv[0], int(argv[1]), argv[argv.index("--") + 1:]
    Path(gate).mkdir(parents=True, exist_ok=True)
    tune_stage.tune_trial = gated(tune_stage.__name__, "tune_trial", gate, free)
    return cli_main(rest)


if __name__ == "__main__":  # run as `-m`: this module is __main__, which cloudpickle sends by value
    raise SystemExit(main(sys.argv[1:]))
