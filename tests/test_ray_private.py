"""Ray's private internals: used only on known versions, and a loud failure when a known version changes them."""
import pytest
import ray

from components.training import ray_private


def test_a_known_ray_keeps_the_private_layout_the_overrides_need():
    if not ray.__version__.startswith(ray_private.KNOWN_RAY_VERSIONS):
        pytest.skip(f"Ray {ray.__version__} is not a known version: the pipeline runs on public APIs only")
    problems = ray_private.private_layout_problems()
    assert not problems, (f"Ray {ray.__version__} changed private names that components/training/ray_private.py "
                          f"overrides: {problems}; update the overrides or drop the version from KNOWN_RAY_VERSIONS")
    assert ray_private.internals_enabled()


def test_an_unknown_ray_version_gets_the_public_trainer(monkeypatch):
    from ray.train.torch import TorchTrainer

    monkeypatch.setattr(ray_private, "ray_version", lambda: "2.99.0")
    ray_private.internals_enabled.cache_clear()
    try:
        assert ray_private.lean_torch_trainer_class(False, False) is TorchTrainer
    finally:
        ray_private.internals_enabled.cache_clear()


def test_a_missing_private_name_is_reported(monkeypatch):
    monkeypatch.setattr(ray_private, "PRIVATE_LAYOUT", (*ray_private.PRIVATE_LAYOUT,
                                                        ("ray.train.torch", "TorchTrainer", ("_gone_in_a_release",)),
                                                        ("ray.no_such_module", None, ())))
    assert ray_private.private_layout_problems() == ["no TorchTrainer._gone_in_a_release", "no module ray.no_such_module"]


def test_a_runs_stop_handlers_are_removed_when_it_ends():
    """A run's Ctrl+C handler holds its controller; left installed it would keep the actor alive."""
    import signal

    from components.training.ray_private import handlers_restored, install_abort_on_stop

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with handlers_restored():
        install_abort_on_stop(controller=object())
        assert signal.getsignal(signal.SIGINT) not in before
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
