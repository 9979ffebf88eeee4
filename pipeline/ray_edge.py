"""The Ray edge: join the configured cluster, or start a local one bound to 127.0.0.1."""
from __future__ import annotations

import os

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
# Ray Train's controller polls its workers every 2 s by default, and a run's last report and its end each
# wait for a poll: 0.5 s cut the trainer benchmark's shutdown from 3.9 s to 1.0 s. Ray Train's print patch
# sends each worker print to its logger and to stdout, so every progress line showed twice. Ray Train passes
# both variables on to its controller and workers; a value already in the environment wins.
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


def keep_ray_on_loopback() -> None:
    """Without these, Ray binds the machine's external address and phones home usage stats."""
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)


def ensure_ray(address: str | None, num_cpus: int | None) -> bool:
    """Initialise Ray once; returns True if this call started a local cluster (the caller shuts it down)."""
    keep_ray_on_loopback()
    for key, value in TRAIN_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": True, "logging_level": "warning"}
    if address:
        ray.init(address=address, **quiet)
        return False
    # address="local" always starts a fresh cluster: a stale /tmp/ray/ray_current_cluster is ignored.
    # The dashboard serves Ray's state API, which Train's placement-group cleaner polls; keep it on loopback.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", **quiet)
    return True
