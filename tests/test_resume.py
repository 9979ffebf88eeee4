"""Kill the pipeline during training, rerun it: prepare is skipped and train resumes from its checkpoint."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, smoke_overrides

pytestmark = pytest.mark.slow


def pipeline_cmd(tmp_path) -> list[str]:
    cmd = [sys.executable, "-m", "pipeline", "run", "--config", str(REPO / "configs" / "smoke.yaml")]
    # A cheap downstream (one tune trial, small evaluation): the resumed training is what is under test.
    for o in smoke_overrides(tmp_path) + ["train.steps=60", "train.report_every=10", "train.checkpoint_every=10",
                                          'tune.search_space={"train.lr_g": {type: grid, values: [0.0002]}}',
                                          "evaluate.samples_per_class=8", "evaluate.classifier_steps=50"]:
        cmd += ["--set", o]
    return cmd


def test_killed_training_resumes_and_skips_prepare(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(pipeline_cmd(tmp_path), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    deadline = time.time() + 300
    for line in first.stdout:
        seen.append(line)
        if "train step 30/60" in line or time.time() > deadline:
            break
    os.killpg(first.pid, signal.SIGKILL)  # the driver and everything it started, mid-training
    first.wait(timeout=60)
    assert any("train step 30/60" in s for s in seen), "".join(seen[-30:])

    second = subprocess.run(pipeline_cmd(tmp_path), cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=900)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-3000:]
    assert "prepare: cached" in out
    resumed_at = [int(line.rsplit(" ", 1)[1]) for line in out.splitlines()
                  if "resuming from the checkpoint at step" in line]
    assert resumed_at and resumed_at[0] >= 20, out[-3000:]
