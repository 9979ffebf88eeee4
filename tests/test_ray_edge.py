"""The Ray edge's scheduling choice for the local cluster it starts (no Ray needed)."""
import os
import subprocess
import sys

import pytest

from pipeline.ray_edge import batch_scheduled

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH") or os.sched_getscheduler(0) != os.SCHED_OTHER,
                                reason="Linux scheduling policies, from a normally scheduled test process")


def child_policy() -> int:
    out = subprocess.run([sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


def test_processes_started_inside_are_batch_scheduled_and_the_caller_is_restored():
    with batch_scheduled():
        assert child_policy() == os.SCHED_BATCH
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    assert child_policy() == os.SCHED_OTHER


def test_disabled_leaves_children_alone():
    with batch_scheduled(False):
        assert child_policy() == os.SCHED_OTHER


def test_the_caller_is_restored_when_the_body_raises():
    with pytest.raises(RuntimeError):
        with batch_scheduled():
            raise RuntimeError("ray.init failed")
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
