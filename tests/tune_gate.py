"""`python -m tests.tune_gate GATE_DIR FREE [--fail SLOTS] [--fail-late SLOTS] -- <pipeline CLI args>`: the
pipeline CLI, with campaign trials held at a gate that a test controls, so the test (not the machine's
speed) decides when a campaign is mid-way, and with chosen trials raising.

The first FREE trials to start run as usual. Every later trial writes GATE_DIR/held-<slot> and waits, without
training, until GATE_DIR/release exists. Each trial also writes GATE_DIR/slot-<n> holding its Tune trial id.
Trials whose slot is in --fail raise before training, those in --fail-late right after their first report (so
they have a score); a retried trial raises again. SLOTS is a comma-separated list, or "all".
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


def gated(module: str, name: str, gate: str, free: int, fail: str = "", fail_late: str = ""):
    """The trial function `module.name`, held at the gate from the (free + 1)-th trial on."""
    def chosen(slot: int, slots: str) -> bool:
        return slots == "all" or str(slot) in slots.split(",")

    def trial(config, **kwargs):
        import importlib

        from ray import tune

        trial_id = tune.get_context().get_trial_id()
        marked = Path(gate) / f"fails-{trial_id}"
        if marked.exists():  # a retry of a trial chosen to fail
            when = marked.read_text()
        else:
            slot = claim_slot(Path(gate), trial_id)
            when = "early" if chosen(slot, fail) else "late" if chosen(slot, fail_late) else ""
            if when:
                marked.write_text(when)
            if slot >= free:
                (Path(gate) / f"held-{slot}").touch()
                while not (Path(gate) / "release").exists():
                    time.sleep(0.05)
        if when == "early":
            raise RuntimeError(f"injected failure of trial {trial_id} before training")
        if when == "late":
            report = tune.report

            def report_then_fail(*args, **kw):
                report(*args, **kw)
                raise RuntimeError(f"injected failure of trial {trial_id} after its first report")

            tune.report = report_then_fail  # the trial session looks tune.report up at each report
        # The worker imports the stage module afresh: its attribute is the real trial function.
        return getattr(importlib.import_module(module), name)(config, **kwargs)

    trial.__name__ = name  # Tune names trials and checks restores by the trainable's name
    return trial


def main(argv: list[str]) -> int:
    import pipeline.stages.tune as tune_stage
    from pipeline.cli import main as cli_main

    gate, free, rest = argv[0], int(argv[1]), argv[argv.index("--") + 1:]
    options = argv[2:argv.index("--")]
    fail = options[options.index("--fail") + 1] if "--fail" in options else ""
    fail_late = options[options.index("--fail-late") + 1] if "--fail-late" in options else ""
    Path(gate).mkdir(parents=True, exist_ok=True)
    tune_stage.tune_trial = gated(tune_stage.__name__, "tune_trial", gate, free, fail, fail_late)
    return cli_main(rest)


if __name__ == "__main__":  # run as `-m`: this module is __main__, which cloudpickle sends by value
    raise SystemExit(main(sys.argv[1:]))
