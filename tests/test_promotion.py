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
                    require_no_divergence=True, min_improvement=1.0)
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

    def register(ev: dict) -> str:
        G = Generator(1, 32, 10, base=4, z_dim=8, norm="none")
        with mlflow.start_run(experiment_id=exp):
            info = log_generator(G, generator_arch(G, 4, "none"))
        return str(mlflow.register_model(info.model_uri, NAME, tags=summary_tags(ev)).version)

    return {"uri": uri, "client": client, "register": register, "tmp": tmp}


def test_gate_table_lists_each_gate():
    rows = check_gates(evaluation(150.0, tail=0.1), GATES, None)
    assert {r["gate"]: r["passed"] for r in rows} == {"max_fcd": False, "max_class_kl": True,
                                                       "min_tail_recall": False, "no_divergence": True}
    assert check_gates(evaluation(float("nan")), GATES, None)[0]["passed"] is False


def test_a_generator_that_copies_its_training_set_is_not_promoted():
    gates = GatesConfig(max_copy_share=0.2, require_no_divergence=False)
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
    assert alias_version(client, NAME, CHAMPION) == v1 and alias_version(client, NAME, PREVIOUS) == v3
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 3  # nothing deleted


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
