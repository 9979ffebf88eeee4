"""Rewrite tests/golden/smoke_trajectory.json. Run only when a change is *meant* to alter training maths:
    .venv/bin/python -m tests.golden.regenerate
"""
import json
import tempfile
from pathlib import Path

from components.training.loop import train_steps
from tests.helpers import fresh_state, smoke_loop_config

GOLDEN = Path(__file__).with_name("smoke_trajectory.json")
KEYS = ("d_loss", "g_loss", "rec_loss")


def trajectory(data_dir: Path, steps: int = 20) -> dict[str, list[float]]:
    state, cfg, loss = fresh_state(smoke_loop_config(data_dir))
    train_steps(state, loss, cfg, steps)
    return {k: state.trace[k] for k in KEYS}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.write_text(json.dumps(trajectory(Path(tmp) / "data"), indent=1))
    print(f"wrote {GOLDEN}")
