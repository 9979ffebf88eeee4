"""Every use of Ray's private internals, in one module, switched on only for Ray versions known to work.

The pipeline runs on Ray's public APIs alone. On the versions in KNOWN_RAY_VERSIONS it also trims what a
fixed-size Ray Train run starts beside its workers and quietens a log line, through private classes and
methods. A Ray outside them gets the public behaviour; tests/test_ray_private.py fails loudly when a version
listed here no longer has the layout these overrides rely on.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import logging

KNOWN_RAY_VERSIONS = ("2.60.",)  # version prefixes whose private layout is checked by the tests

# (module, attribute, methods it must have) for every private name used below.
PRIVATE_LAYOUT = (
    ("ray.train.v2._internal.callbacks.datasets", "DatasetsCallback", ()),
    ("ray.train.v2._internal.callbacks.placement_group_callback", "PlacementGroupCleanerCallback", ()),
    ("ray.train.v2._internal.execution.scaling_policy", "FixedScalingPolicy",
     ("after_controller_start", "_maybe_send_resource_request", "_send_resource_request",
      "_cancel_resource_request")),
    ("ray.train.torch", "TorchTrainer", ("_create_default_callbacks", "_initialize_and_run_controller",
                                         "_register_sigint_handler")),
    ("ray.train.v2._internal.execution.context", None, ()),
)


def ray_version() -> str:
    import ray

    return ray.__version__


def private_layout_problems() -> list[str]:
    """What of PRIVATE_LAYOUT this Ray lacks, one line each; empty when every override has its target."""
    problems = []
    for module, attribute, methods in PRIVATE_LAYOUT:
        try:
            target = importlib.import_module(module)
        except ImportError:
            problems.append(f"no module {module}")
            continue
        if attribute is not None:
            target = getattr(target, attribute, None)
            if target is None:
                problems.append(f"no {module}.{attribute}")
                continue
        problems += [f"no {attribute}.{m}" for m in methods if not hasattr(target, m)]
    return problems


@functools.cache
def internals_enabled() -> bool:
    """True on a known Ray version whose private layout is what the overrides expect."""
    return ray_version().startswith(KNOWN_RAY_VERSIONS) and not private_layout_problems()


def lean_torch_trainer_class(placement_group_cleaner: bool = True, autoscaling_requests: bool = True):
    """TorchTrainer without the helper actors a run does not use; each is one more Python process to start,
    and one more that wakes 100 times a second while the run trains.

    - Ray Train starts a DatasetManager actor for every run, with or without Ray Datasets; without any it
      serves nothing.
    - placement_group_cleaner=False drops the detached actor that removes the run's placement group if the
      controller dies without cleaning up (it also asks the state API every second). Only for a run whose
      placement group cannot outlive its driver anyway: one started by the driver of a local cluster it
      owns, where a dead controller fails the run and the cluster ends with the driver. Not for a Tune
      trial: a scheduler that stops it early kills its controller while the campaign goes on.
    - autoscaling_requests=False: a fixed-size run does not register its workers' resources with Ray's
      autoscaling coordinator, a detached actor its controller creates on first use and that then lives as
      long as the cluster. The requests tell an autoscaler what to add; on a local cluster its driver
      started there is none, so the actor would only cost a process.
      Elastic runs keep it: they also read back what it reserved.
    The plain TorchTrainer on a Ray outside KNOWN_RAY_VERSIONS or with another private layout."""
    from ray.train.torch import TorchTrainer

    if not internals_enabled():
        return TorchTrainer
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy

    class UnannouncedFixedScalingPolicy(FixedScalingPolicy):
        """FixedScalingPolicy minus its calls to the autoscaling coordinator (registering on start, renewing
        every 20 s, cancelling on shutdown): the worker group's own placement group still reserves the CPUs."""

        def after_controller_start(self, train_run_context):
            pass

        def _maybe_send_resource_request(self):
            pass

        def _send_resource_request(self):
            pass

        def _cancel_resource_request(self):
            pass

    class LeanTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            unused = () if self.datasets else (DatasetsCallback,)
            if not placement_group_cleaner:
                unused += (PlacementGroupCleanerCallback,)
            return [cb for cb in super()._create_default_callbacks() if not isinstance(cb, unused)]

        def _initialize_and_run_controller(self, **controller_init_kwargs):
            policy = controller_init_kwargs.get("scaling_policy")
            if not autoscaling_requests and type(policy) is FixedScalingPolicy:
                controller_init_kwargs["scaling_policy"] = UnannouncedFixedScalingPolicy(policy.scaling_config)
            with handlers_restored():
                return super()._initialize_and_run_controller(**controller_init_kwargs)

        def _register_sigint_handler(self, controller):
            install_abort_on_stop(controller)

    return LeanTorchTrainer


@contextlib.contextmanager
def handlers_restored():
    """Put back the SIGINT/SIGTERM handlers a run replaced once it ends: the run's handler holds its
    controller, which would otherwise stay alive, with its resources, as long as this process does."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def install_abort_on_stop(controller) -> None:
    """Ctrl+C or SIGTERM while a run trains: abort its controller (which stops the workers), then hand the
    signal to the handler that was there before, or raise KeyboardInterrupt. Ray's own Ctrl+C handler ends
    the driver with `sys.exit(0)`, which a caller cannot tell from success."""
    import signal

    import ray

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def on_stop(signum, frame):
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        try:
            ray.get(controller.abort.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - the controller may already be gone; the interrupt still goes up
            pass
        if callable(previous[signum]):
            previous[signum](signum, frame)
        raise KeyboardInterrupt

    for sig in previous:
        signal.signal(sig, on_stop)


def quiet_report_logging() -> None:
    """Ray Train 2.60 logs every `report` at INFO through a logger named after its file path, so neither
    `ray.train`'s level nor LoggingConfig reaches it; our own progress lines already say what a report holds."""
    if not internals_enabled():
        return
    from ray.train.v2._internal.execution import context as train_context

    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
