"""Registry promotion against a real MLflow (SQLite in tmp): gates, aliases, rollback, dry runs, pyfunc."""
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from components.errors import UserError
from components.models import Generator
from components.promotion import (CHALLENGER, CHAMPION, PREVIOUS, alias_version, check_gates, decide,
                                  ensure_registered_model, rollback, summary_tags)
from components.promotion_config import GatesConfig
from components.registry import generator_arch, log_generator
from pipeline.cli import main
from tests.conftest import REPO

GATES = GatesConfig(max_fcd=100.0, max_class_kl=0.5, min_tail_recall=0.2, min_d_fgsm_accuracy=None,
                    max_fcd_ratio=None, max_copy_share=None, require_no_divergence=True, min_improvement=1.0)
NAME = "gen-test"


def evaluation(fcd, kl=0.05, tail=0.8, diverged=0.0):
    return {"fcd": fcd, "fcd_real_vs_real": 5.0, "class_kl": kl, "recall_mean": 0.8, "tail_recall": tail,
            "head_recall": 0.9, "d_fgsm_accuracy": 0.5, "diverged": diverged}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("promotion", (tmp / "art").as_uri())
    client = MlflowClient(uri)
    ensure_registered_model(client, NAME)

    def register(ev: dict, name: str = NAME, **context: str) -> str:
        G = Generator(1, 32, 10, base=4, z_dim=8, norm="none")
        with mlflow.start_run(experiment_id=exp):
            info = log_generator(G, generator_arch(G, 4, "none"))
        context = {"data_digest": "d1", "evaluator_settings": "e1", **context}
        return str(mlflow.register_model(info.model_uri, name, tags={**summary_tags(ev), **context}).version)

    return {"uri": uri, "client": client, "register": register, "tmp": tmp}


def test_gate_table_lists_each_gate():
    rows = check_gates(evaluation(150.0, tail=0.1), GATES, None)
    assert {r["gate"]: r["passed"] for r in rows} == {"max_fcd": False, "max_class_kl": True,
                                                       "min_tail_recall": False, "no_divergence": True}
    assert check_gates(evaluation(float("nan")), GATES, None)[0]["passed"] is False


def test_a_generator_that_copies_its_training_set_is_not_promoted():
    gates = GatesConfig(max_copy_share=0.2, require_no_divergence=False, max_fcd_ratio=None, max_class_kl=None,
                        min_tail_recall=None)
    copier, fresh = {**evaluation(10.0), "copy_share_feature": 0.9}, {**evaluation(10.0), "copy_share_feature": 0.05}
    assert [r["passed"] for r in check_gates(copier, gates, None)] == [False]
    assert [r["passed"] for r in check_gates(fresh, gates, None)] == [True]
    assert summary_tags(copier)["eval.copy_share_feature"] == "0.9"  # re-judging a version later sees it


def test_promotion_lifecycle(registry):
    client, register = registry["client"], registry["register"]
    v1 = register(evaluation(50.0))
    d1 = decide(client, NAME, v1, GATES)
    assert d1["promoted"] and alias_version(client, NAME, CHAMPION) == v1

    v2 = register(evaluation(49.5))  # better, but not by min_improvement = 1.0
    d2 = decide(client, NAME, v2, GATES)
    assert not d2["promoted"] and d2["failed_gates"] == ["beats_champion_fcd"]
    assert alias_version(client, NAME, CHALLENGER) == v2 and alias_version(client, NAME, CHAMPION) == v1
    assert client.get_model_version(NAME, v2).tags["promotion.failed_gates"] == "beats_champion_fcd"

    v3 = register(evaluation(30.0))
    assert decide(client, NAME, v3, GATES)["promoted"]
    assert alias_version(client, NAME, CHAMPION) == v3 and alias_version(client, NAME, PREVIOUS) == v1

    assert rollback(client, NAME) == (v3, v1)
    assert alias_version(client, NAME, CHAMPION) == v1 and alias_version(client, NAME, PREVIOUS) is None
    assert client.get_model_version(NAME, v3).tags["promotion.decision"] == "rolled_back"
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 3  # nothing deleted
    assert "| beats_champion_fcd |" in client.get_model_version(NAME, v2).description


def test_failing_gate_is_named(registry):
    v = registry["register"](evaluation(500.0, diverged=1.0))
    d = decide(registry["client"], NAME, v, GATES)
    assert not d["promoted"] and {"max_fcd", "no_divergence"} <= set(d["failed_gates"])


def test_dry_run_moves_nothing(registry):
    client = registry["client"]
    before = {a: alias_version(client, NAME, a) for a in (CHAMPION, CHALLENGER)}
    v = registry["register"](evaluation(1.0))
    d = decide(client, NAME, v, GATES, dry_run=True)
    assert d["promoted"] and {a: alias_version(client, NAME, a) for a in (CHAMPION, CHALLENGER)} == before


def test_pyfunc_returns_images_for_requested_labels(registry):
    mlflow.set_tracking_uri(registry["uri"])
    champion = alias_version(registry["client"], NAME, CHAMPION)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/{champion}")
    out = model.predict(pd.DataFrame({"label": [0, 5, 9, 9], "seed": [0, 1, 2, 2]}))
    assert out.shape == (4, 1, 32, 32) and out.dtype == np.float32
    assert out.min() >= -1 and out.max() <= 1
    np.testing.assert_array_equal(out[2], out[3])  # same label and seed, same image
    # count: several images per row, from consecutive seeds; labels alone work too
    many = model.predict(pd.DataFrame({"label": [5, 9], "seed": [1, 2], "count": [3, 2]}))
    assert many.shape == (5, 1, 32, 32)
    same = dict(rtol=0, atol=1e-6)  # across batch sizes, kernels may round the last bit differently
    np.testing.assert_allclose(many[0], out[1], **same)
    np.testing.assert_allclose(many[3], out[2], **same)
    np.testing.assert_allclose(many[1], model.predict(pd.DataFrame({"label": [5], "seed": [2]}))[0], **same)
    assert np.abs(many[0] - many[1]).max() > 1e-3  # consecutive seeds are different images
    assert model.predict(pd.DataFrame({"label": [3, 4]})).shape == (2, 1, 32, 32)


def cli(registry, *args):
    return main([*args, "--config", str(REPO / "configs" / "smoke.yaml"), "--set", f"tracking.uri={registry['uri']}",
                 "--set", f"tracking.artifact_root={registry['tmp'] / 'art'}"])


def test_cli_promote_rollback_generate(registry, tmp_path, capsys):
    client = registry["client"]
    v = registry["register"](evaluation(0.5))
    assert cli(registry, "promote", "--model", NAME, "--version", v, "--dry-run") == 0
    assert alias_version(client, NAME, CHAMPION) != v
    assert cli(registry, "promote", "--model", NAME, "--version", v) == 0
    assert alias_version(client, NAME, CHAMPION) == v
    assert cli(registry, "rollback", "--model", NAME) == 0
    assert alias_version(client, NAME, CHAMPION) != v
    out = tmp_path / "grid.png"
    assert cli(registry, "generate", "--model", f"models:/{NAME}@{CHAMPION}", "--per-class", "2", "--out", str(out)) == 0
    assert out.stat().st_size > 0
    capsys.readouterr()
    assert cli(registry, "promote", "--model", NAME, "--version", "999") == 2
    assert "no version 999" in capsys.readouterr().err


def test_rollback_without_previous_is_a_user_error(registry):
    ensure_registered_model(registry["client"], "lonely")
    with pytest.raises(UserError, match="no 'previous-champion'"):
        rollback(registry["client"], "lonely")


def test_a_missing_divergence_record_fails_its_gate():
    unknown = evaluation(50.0)
    del unknown["diverged"]
    row = next(r for r in check_gates(unknown, GATES, None) if r["gate"] == "no_divergence")
    assert row["passed"] is False and check_gates(evaluation(50.0), GATES, None)[-1]["passed"] is True


def test_cli_promote_fail_if_rejected_exits_3(registry, capsys):
    v = registry["register"](evaluation(0.5, diverged=1.0))  # rejected by no_divergence
    assert cli(registry, "promote", "--model", NAME, "--version", v, "--dry-run") == 0
    assert cli(registry, "promote", "--model", NAME, "--version", v, "--dry-run", "--fail-if-rejected") == 3
    assert '"promoted": false' in capsys.readouterr().out


def _model(registry, name: str, *evals_and_contexts) -> list[str]:
    ensure_registered_model(registry["client"], name)
    return [registry["register"](ev, name, **ctx) for ev, ctx in evals_and_contexts]


def ratio_eval(fcd: float, ratio: float) -> dict:
    return {**evaluation(fcd), "fcd_class_matched_ratio": ratio}


def test_champions_measured_with_another_evaluator_are_compared_by_ratio(registry):
    client, name = registry["client"], "cross-evaluator"
    v1, v2, v3, v4 = _model(registry, name, (ratio_eval(50.0, 3.0), {}),
                            (ratio_eval(30.0, 3.5), {"evaluator_settings": "e2"}),  # lower raw FCD, worse ratio
                            (ratio_eval(80.0, 2.0), {"evaluator_settings": "e2"}),  # higher raw FCD, better ratio
                            (ratio_eval(75.0, 2.5), {"evaluator_settings": "e2"}))  # same evaluator as v3: raw FCD
    assert decide(client, name, v1, GATES)["promoted"]
    d2 = decide(client, name, v2, GATES)
    assert d2["failed_gates"] == ["beats_champion_fcd_class_matched_ratio"] and "another evaluator" in d2["gates"][-1]["note"]
    assert decide(client, name, v3, GATES)["promoted"]
    d4 = decide(client, name, v4, GATES)
    assert d4["promoted"] and d4["gates"][-1]["gate"] == "beats_champion_fcd"  # 75 < 80 - 1, same evaluator
    assert "another evaluator" in client.get_model_version(name, v2).description


def test_a_champion_without_a_comparable_number_is_not_beaten_silently(registry):
    client, name = registry["client"], "no-ratio"
    v1, v2 = _model(registry, name, (evaluation(50.0), {}), (ratio_eval(10.0, 1.0), {"data_digest": "d2"}))
    decide(client, name, v1, GATES)
    d2 = decide(client, name, v2, GATES)
    assert not d2["promoted"] and "not comparable" in d2["gates"][-1]["note"]


def test_a_double_rollback_goes_further_back_and_never_re_promotes(registry):
    client, name = registry["client"], "double-rollback"
    va, vb, vc = _model(registry, name, (evaluation(50.0), {}), (evaluation(40.0), {}), (evaluation(30.0), {}))
    for v in (va, vb, vc):
        assert decide(client, name, v, GATES)["promoted"]
    assert rollback(client, name) == (vc, vb)
    assert (alias_version(client, name, CHAMPION), alias_version(client, name, PREVIOUS)) == (vb, va)
    assert rollback(client, name) == (vb, va)
    assert (alias_version(client, name, CHAMPION), alias_version(client, name, PREVIOUS)) == (va, None)
    with pytest.raises(UserError, match="no 'previous-champion'"):
        rollback(client, name)
    tags = {v: client.get_model_version(name, v).tags for v in (va, vb, vc)}
    assert [tags[v]["promotion.decision"] for v in (va, vb, vc)] == ["champion", "rolled_back", "rolled_back"]
    assert tags[vc]["rollback.to"] == vb and tags[va]["rollback.restored_from"] == vb


def test_rollback_refuses_a_version_that_failed_its_gates(registry):
    client, name = registry["client"], "rejected-previous"
    good, bad = _model(registry, name, (evaluation(50.0), {}), (evaluation(500.0), {}))
    decide(client, name, good, GATES)
    assert not decide(client, name, bad, GATES)["promoted"]
    client.set_registered_model_alias(name, PREVIOUS, bad)  # as a hand edit in the UI might
    with pytest.raises(UserError, match="rejected; it will not be made champion again"):
        rollback(client, name)
    assert alias_version(client, name, CHAMPION) == good


class SlowAliases:
    """An MlflowClient whose alias moves take a second: two deciders overlap for certain."""

    def __init__(self, client):
        self.client = client

    def set_registered_model_alias(self, *args):
        import time

        time.sleep(1.0)
        return self.client.set_registered_model_alias(*args)

    def __getattr__(self, attr):
        return getattr(self.client, attr)


def test_two_concurrent_promotions_leave_one_consistent_history(registry):
    import threading
    import time

    from pipeline.tracking import registry_lock

    client, name = registry["client"], "concurrent"
    v0, v1, v2 = _model(registry, name, (evaluation(50.0), {}), (evaluation(40.0), {}), (evaluation(30.0), {}))
    decide(client, name, v0, GATES)
    lock = registry_lock(registry["uri"], name)
    decisions = {}

    def promote(v):
        decisions[v] = decide(SlowAliases(MlflowClient(registry["uri"])), name, v, GATES, lock=lock)

    threads = [threading.Thread(target=promote, args=(v,)) for v in (v1, v2)]
    threads[0].start()
    time.sleep(0.3)  # the first holds the lock (and sleeps in its first alias move) when the second starts
    threads[1].start()
    for t in threads:
        t.join()
    promoted = [v for v in (v1, v2) if decisions[v]["promoted"]]
    replaced = [client.get_model_version(name, v).tags["promotion.replaced"] for v in promoted]
    assert len(set(replaced)) == len(replaced), replaced  # each promotion replaced a different champion
    champion = alias_version(client, name, CHAMPION)
    assert alias_version(client, name, PREVIOUS) == client.get_model_version(name, champion).tags["promotion.replaced"]
    assert decisions[v1]["previous_champion"] == v0 and decisions[v2]["previous_champion"] == v1


def test_diversity_gates_reject_a_class_collapsed_generator():
    gates = GatesConfig(max_fcd_ratio=None, max_class_kl=None, min_tail_recall=None, max_copy_share=None,
                        require_no_divergence=False, min_diversity_ratio=0.5, min_tail_diversity_ratio=0.4)
    varied = {"diversity_mean": 0.8, "tail_diversity": 0.7}
    collapsed = {"diversity_mean": 0.2, "tail_diversity": 0.05}
    tail_only = {"diversity_mean": 0.7, "tail_diversity": 0.1}
    assert [r["passed"] for r in check_gates(varied, gates, None)] == [True, True]
    assert [r["passed"] for r in check_gates(collapsed, gates, None)] == [False, False]
    assert [r["passed"] for r in check_gates(tail_only, gates, None)] == [True, False]
    assert [r["passed"] for r in check_gates({}, gates, None)] == [False, False]  # unmeasured fails too
