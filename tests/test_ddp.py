"""DDP on Ray Train: ranks stay in sync, and 2 workers x batch b equal 1 worker x batch 2b."""
import pytest
import torch

from components.training.checkpoint import load_checkpoint
from components.training.ray_train import run_torch_trainer
from components.training.loop import train_steps
from tests.helpers import fresh_state, smoke_loop_config

pytestmark = pytest.mark.slow


def ddp_config(tmp_path, workers):
    # Norm-free networks: per-rank BatchNorm statistics would make the two set-ups differ by design.
    config = smoke_loop_config(tmp_path / "data", num_workers=workers, batch_size=16, steps=6, report_every=3,
                               checkpoint_every=3)
    return config.with_overrides({"model": {"g_norm": "none", "d_norm": "spectral"}})


def helper_actor_counts() -> dict[str, int]:
    """How many of Ray Train's optional helper actors the session's cluster has ever had, by class."""
    from ray.util.state import list_actors

    return {name: len(list_actors(filters=[("class_name", "=", name)], limit=10_000))
            for name in ("DatasetManager", "PlacementGroupCleaner", "PreemptionWatcher",
                         "_AutoscalingCoordinatorActor")}


def test_two_workers_stay_in_sync_and_match_one_big_batch(ray_cluster, tmp_path):
    helpers_before = helper_actor_counts()
    # As the train stage runs on the local cluster it owns: without the placement-group cleaner, and without
    # resource requests to the autoscaling coordinator.
    result = run_torch_trainer(ddp_config(tmp_path, 2), tmp_path / "ray_results", "ddp-2",
                               placement_group_cleaner=False, autoscaling_requests=False)
    assert result.error is None
    with result.checkpoint.as_directory() as d:
        two = load_checkpoint(d)
    assert result.metrics["ranks_in_sync"] == 1.0 and len(result.metrics["param_digests"]) == 2
    # The reference: one worker with the whole batch, the same loop in this process (a one-worker Ray Train
    # run is that loop without DDP; skipping its start-up keeps the test short).
    state, cfg, loss = fresh_state(ddp_config(tmp_path, 1))
    train_steps(state, loss, cfg, cfg.steps)
    one = {"G": state.G.state_dict(), "D": state.D.state_dict(), "G_ema": state.G_ema.state_dict()}
    for key in ("G", "D", "G_ema"):
        for name, tensor in one[key].items():
            torch.testing.assert_close(two[key][name], tensor, rtol=1e-4, atol=1e-5, msg=f"{key}.{name}")
    assert len(two["trace"]["d_loss"]) == len(state.trace["d_loss"]) == cfg.steps
    # The local cluster's defaults reached Ray Train: no preemption watcher actor was ever started; and the
    # lean trainer started no dataset manager (no Ray Datasets), no placement-group cleaner, and no autoscaling
    # coordinator. Every run on the session's cluster goes without one (the pipeline's stages and this file's
    # runs all do), so the cluster never had it.
    assert helper_actor_counts() == helpers_before
    assert helpers_before["PreemptionWatcher"] == helpers_before["_AutoscalingCoordinatorActor"] == 0


def test_the_lean_trainer_drops_only_the_helpers_a_run_does_not_use(ray_cluster, tmp_path):
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    from components.training.ray_train import build_torch_trainer

    def callback_types(config, **kwargs) -> set[type]:
        trainer = build_torch_trainer(config, tmp_path / "ray_results", "lean", **kwargs)
        return {type(cb) for cb in trainer._create_default_callbacks()}

    config = ddp_config(tmp_path, 1)
    default = callback_types(config)
    assert PlacementGroupCleanerCallback in default and DatasetsCallback not in default
    assert PlacementGroupCleanerCallback not in callback_types(config, placement_group_cleaner=False)
    assert DatasetsCallback in callback_types(config.with_overrides(reader="ray_data"))  # Ray Datasets keep their manager


def test_the_session_cluster_is_owned(ray_cluster):
    from pipeline.ray_edge import owns_local_cluster

    assert owns_local_cluster()


def test_the_local_clusters_processes_are_batch_scheduled_and_the_driver_is_not(ray_cluster):
    import os

    if os.sched_getscheduler(0) != os.SCHED_OTHER:
        pytest.skip("the test process itself is not normally scheduled")

    @ray_cluster.remote(num_cpus=0)
    def policy() -> int:
        return os.sched_getscheduler(0)

    assert ray_cluster.get(policy.remote()) == os.SCHED_BATCH
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"


def test_the_local_clusters_daemons_start_with_its_settings(ray_cluster):
    """The log monitor and the dashboard read these once, at start: look in their own environments."""
    import os
    from pathlib import Path

    from pipeline.ray_edge import LOCAL_CLUSTER_ENV

    seen = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = dict(e.split(b"=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in e)
        except OSError:  # gone, or not ours to read
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) != os.getpid():  # started by this driver's ray.init
            continue
        for script in ("log_monitor.py", "dashboard/dashboard.py"):
            if script.encode() in cmdline:
                seen[script] = {k: environ.get(k.encode(), b"").decode() for k in LOCAL_CLUSTER_ENV}
    assert set(seen) == {"log_monitor.py", "dashboard/dashboard.py"}
    for script, env in seen.items():
        assert env == LOCAL_CLUSTER_ENV, script


def test_use_gpu_without_gpus_is_a_one_line_user_error(ray_cluster, tmp_path):
    from components.errors import UserError
    from pipeline.stages.train import check_resources

    config = ddp_config(tmp_path, 2)
    with pytest.raises(UserError, match=r"train.use_gpu is true but the Ray cluster has 0 GPU\(s\) for 2"):
        check_resources(config.with_overrides({"train": {"use_gpu": True}}))
    check_resources(config)  # CPU training needs no GPU


def test_the_ray_data_reader_needs_a_cpu_beside_the_workers(ray_cluster, tmp_path):
    """Two one-CPU workers on the two-CPU session cluster would leave Ray Data's read tasks no CPU, and the
    run would wait forever: refused in one line instead. Half a CPU each leaves one."""
    from components.errors import UserError
    from pipeline.stages.train import check_resources

    config = ddp_config(tmp_path, 2).with_overrides(reader="ray_data")
    with pytest.raises(UserError, match=r"take 2 of the cluster's 2 CPUs, leaving none for Ray Data"):
        check_resources(config)
    check_resources(config.with_overrides({"train": {"resources_per_worker": {"CPU": 0.5}}}))


def test_ray_train_env_defaults_unless_the_user_says_otherwise(ray_cluster, monkeypatch):
    import os

    from pipeline.ray_edge import ensure_ray

    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    monkeypatch.delenv("RAY_TRAIN_ENABLE_PRINT_PATCH", raising=False)
    assert ensure_ray(None, 2) is False  # the session's Ray is reused
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.5"
    assert os.environ["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"  # worker prints reach the log once, not twice
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "3")
    ensure_ray(None, 2)
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "3"


def test_ray_trains_per_report_info_lines_are_quietened():
    import logging

    from ray.train.v2._internal.execution import context as train_context

    from components.training.ray_train import quiet_report_logging

    logger = logging.getLogger(train_context.__file__)  # the name Ray Train 2.60 logs each report under
    level = logger.level
    try:
        quiet_report_logging()
        assert not logger.isEnabledFor(logging.INFO) and logger.isEnabledFor(logging.WARNING)
    finally:
        logger.setLevel(level)
