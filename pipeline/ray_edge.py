"""The Ray edge: join the configured cluster, or start a local one bound to 127.0.0.1."""
from __future__ import annotations

import contextlib
import os

from components.training.allocator import set_allocator_env_for_children
from pipeline import signals

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
# Ray Train's controller polls its workers every 2 s by default, and a run's last report and its end each
# wait for a poll, so a shorter interval shortens every run's tail. Ray Train's print patch sends each worker
# print to its logger and to stdout, so every progress line would show twice. Ray Train passes both variables
# on to its controller and workers; a value already in the environment wins.
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
# Only for a cluster this process starts, where each background process competes with training for the cores:
# - a one-node local cluster is never drained, so Ray Train's preemption watcher (one more Python actor,
#   started while the first steps run) has nothing to watch;
# - Ray's log monitor looks for new log files (a new worker's) every 0.1 s until there are 1,000 of them,
#   then every 0.5 s; starting at 0.5 s delays a new worker's first lines by at most 0.4 s. Lines of known
#   files still flow every 0.1 s;
# - the dashboard reads its own processes' CPU and memory (/proc smaps) for its Prometheus metrics every 5 s
#   by default; once a minute is enough for a laptop's dashboard.
LOCAL_CLUSTER_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0",
                     "METRICS_RECORD_INTERVAL_S": "60"}
# The GCS address of the local cluster this process started, while it runs (see owns_local_cluster).
_owned_gcs_address: str | None = None
_owned_tuned = False  # whether that cluster was started with local tuning on


def keep_ray_on_loopback() -> None:
    """Without these, Ray binds the machine's external address and phones home usage stats."""
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def batch_scheduled(enabled: bool = True):
    """Processes started inside inherit the Linux SCHED_BATCH policy; the calling thread gets its own back.

    Every Ray Python process wakes 100 times a second (its core worker checks for signals every 10 ms), and
    a local cluster running Ray Train has more than ten of them beside its workers (dashboard and its heads,
    monitors, Train's controller and actors). A waking normal process preempts a
    running training thread at once; a SCHED_BATCH one waits for the scheduler tick instead. The helper threads ray.init starts in this
    process stay batch too; only the calling thread is restored. No-op where the policy does not exist."""
    if not enabled or not hasattr(os, "SCHED_BATCH"):
        yield
        return
    before = os.sched_getscheduler(0)
    if before != os.SCHED_OTHER:  # a real-time or already-batch caller keeps what it chose
        yield
        return
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    try:
        yield
    finally:
        os.sched_setscheduler(0, before, os.sched_param(0))


def ensure_ray(address: str | None, num_cpus: int | None, local_tuning: bool = True) -> bool:
    """Initialise Ray once; returns True if this call started a local cluster (the caller shuts it down).

    local_tuning (the config's ray.local_cluster_tuning), for a local cluster this call starts: its processes
    run under SCHED_BATCH (see `batch_scheduled`) with LOCAL_CLUSTER_ENV, and `lean_runs()` is true while it
    lives. The one switch for every local-cluster optimisation."""
    keep_ray_on_loopback()
    for key, value in TRAIN_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": True, "logging_level": "warning"}
    if address:
        ray.init(address=address, **quiet)
        signals.install()
        return False
    if local_tuning:
        for key, value in LOCAL_CLUSTER_ENV.items():
            os.environ.setdefault(key, value)
    # Every process of the cluster keeps the memory it frees (components/training/allocator.py): the workers'
    # steps stop faulting their activations in; the cluster's daemons inherit it too, light on one node.
    set_allocator_env_for_children()
    # address="local" always starts a fresh cluster: a stale /tmp/ray/ray_current_cluster is ignored.
    # The dashboard serves Ray's state API, which Train's placement-group cleaner polls; keep it on loopback.
    with batch_scheduled(local_tuning):
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", **quiet)
    signals.install()
    global _owned_gcs_address, _owned_tuned
    _owned_gcs_address, _owned_tuned = ray.get_runtime_context().gcs_address, local_tuning
    return True


def lean_runs() -> bool:
    """Whether Ray Train runs started now may go without the helpers a local cluster does not need (see
    components.training.ray_private.lean_torch_trainer_class): only on a cluster this process started, with
    local tuning on. No autoscaler reads resource requests there, and a run's placement group cannot outlive
    the driver."""
    return _owned_tuned and owns_local_cluster()


def owns_local_cluster() -> bool:
    """True while Ray is the local cluster this process started: it ends with this process, so nothing a
    run leaves on it (a placement group of a crashed controller) can outlive the driver."""
    import ray

    return (_owned_gcs_address is not None and ray.is_initialized()
            and ray.get_runtime_context().gcs_address == _owned_gcs_address)
