"""The quality benchmark judges each recipe against the issue's targets from its own rows."""
from bench.quality import RECIPES, TARGETS, verdicts


def row(recipe, budget, fcd, ratio, kl, tail_head):
    return {"recipe": recipe, "budget": budget, "fcd": fcd, "fcd_ratio": ratio, "class_kl": kl,
            "tail_head_fcd_ratio": tail_head, "fcd_class_matched_ratio": ratio}


def test_verdicts_follow_the_targets():
    rows = [row("good", "1x", 50.0, 4.0, 0.01, 1.2), row("good", "3x", 45.0, 3.6, 0.01, 1.1),
            row("bad", "1x", 80.0, 6.0, 0.05, 1.8), row("bad", "3x", 90.0, 6.8, 0.05, 1.9),
            row("short", "1x", 50.0, 4.0, 0.01, 1.2)]
    v = verdicts(rows)
    assert all(v["good"].values())
    assert not any(v["bad"].values())
    assert v["short"]["stable_3x_vs_1x_ok"] is None and v["short"]["fcd_ratio_at_1x_ok"]
    assert TARGETS["fcd_ratio_max"] == 5.0 and TARGETS["class_kl_max"] == 0.02


def test_recipes_are_valid_config_overrides():
    from pipeline.config import load_config
    from tests.conftest import REPO

    for name, overrides in RECIPES.items():
        cfg = load_config(REPO / "configs" / "default.yaml", overrides)
        assert name != "naive" or (cfg.data.rebalance == "none" and cfg.model.d_norm == "none")
        assert name != "full" or (cfg.loss.r1_gamma > 0 and cfg.loss.diffaugment and cfg.train.ema_decay > 0)


def test_a_recipe_runs_on_another_config_and_scores_each_budget(tmp_path):
    """--config / --set reach every recipe; 1x and 2x come from one run; the JSON says what was run."""
    import json

    from bench.quality import main
    from tests.conftest import REPO

    out = tmp_path / "q.json"
    result = main(["naive"], [1, 2], out, base_steps=3, config=REPO / "configs" / "smoke.yaml",
                  extra=["evaluate.classifier_steps=20", "evaluate.robustness_eps=[0.05]", "evaluate.pgd_steps=1"])
    saved = json.loads(out.read_text())
    assert saved["rows"] == result["rows"] and saved["config"].endswith("smoke.yaml")
    assert [(r["budget"], r["steps"]) for r in saved["rows"]] == [("1x", 3), ("2x", 6)]
    assert saved["overrides"][0] == "evaluate.classifier_steps=20" and saved["machine"]["device"] == "cpu"
    assert all(r["fcd"] > 0 and r["fcd_real_vs_real"] > 0 for r in saved["rows"])
    assert set(saved["verdicts"]["naive"]) == {"fcd_ratio_at_1x_ok", "class_kl_at_1x_ok", "tail_head_fcd_at_1x_ok",
                                              "stable_3x_vs_1x_ok", "class_matched_fcd_ratio_at_1x_ok"}
    assert all(r["fcd_uniform_floor"] > 0 and r["fcd_class_matched"] > 0 for r in saved["rows"])
    assert all(r["nn_distance_ratio_pixel"] > 0 and r["copy_share_feature"] is not None for r in saved["rows"])
