"""The Ray edge: join the configured cluster, or start a local one bound to 127.0.0.1."""
from __future__ import annotations

import os

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def keep_ray_on_loopback() -> None:
    """Without these, Ray binds the machine's external address and phones home usage stats."""
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)


def ensure_ray(address: str | None, num_cpus: int | None) -> bool:
    """Initialise Ray once; returns True if this call started a local cluster (the caller shuts it down)."""
    keep_ray_on_loopback()
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
