"""Config loading: typed, validated, one-line errors naming the file or dotted key, exit code 2."""
import pytest

from components.errors import UserError
from pipeline.cli import env_overrides, main
from pipeline.config import load_config
from tests.conftest import REPO


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_default_and_smoke_configs_load():
    assert load_config(REPO / "configs" / "default.yaml").train.num_workers == 2
    assert load_config(REPO / "configs" / "smoke.yaml").train.steps <= 50


def test_override_sets_nested_value():
    cfg = load_config(REPO / "configs" / "smoke.yaml", ["train.lr_g=1e-3", "data.imbalance_ratio=5"])
    assert cfg.train.lr_g == 1e-3 and cfg.data.imbalance_ratio == 5


@pytest.mark.parametrize("text, needle", [
    ("train: {lr_g: -1}", "train.lr_g"),
    ("train: {num_workers: 2, batch_size: 1}", "train.batch_size"),
    ("data: {resolution: 48}", "data.resolution"),
    ("loss: {objective: wasserstein-ish}", "loss.objective"),
    ("trian: {steps: 3}", "trian"),
    ("train: {stepz: 3}", "train.stepz"),
    ("tune: {search_space: {train.lr_x: {type: choice, values: [1]}}}", "train.lr_x"),
    ("train: {compile: default}\nloss: {r1_gamma: 1.0}", "train.compile: default cannot compile the double"),
    ("train: {compile: reduce-overhead}", "train.compile: reduce-overhead records CUDA graphs"),
    ("train: {sync: sometimes}", "train.sync"),
    ("loss: {ada_target: 0.6}", "loss.ada_target: adaptive augmentation adjusts"),
])
def test_bad_config_names_the_dotted_key(tmp_path, text, needle):
    with pytest.raises(UserError, match=needle.replace(".", r"\.")):
        load_config(write(tmp_path, text))


def test_cli_missing_config_exits_2_with_one_line(capsys):
    assert main(["run", "--config", "does-not-exist.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does-not-exist.yaml" in err


def test_cli_unknown_key_exits_2_naming_it(tmp_path, capsys):
    path = write(tmp_path, "train: {steps: 5, warp_speed: 9}")
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.warp_speed" in err and "Traceback" not in err


def test_cli_debug_shows_traceback(tmp_path):
    with pytest.raises(UserError):
        main(["--debug", "run", "--config", "does-not-exist.yaml"])


def test_cli_unknown_stage_in_force(capsys):
    assert main(["run", "--config", str(REPO / "configs" / "smoke.yaml"), "--force", "trian"]) == 2
    assert "trian" in capsys.readouterr().err


def test_dry_run_prints_config_dag_and_plan(tmp_path, capsys):
    code = main(["run", "--config", str(REPO / "configs" / "smoke.yaml"), "--dry-run",
                 "--set", f"work_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "lr_g:" in out and "tune      <- prepare, train" in out
    assert all(f"  {s}" in out for s in ("prepare", "train", "tune", "evaluate", "promote"))
    assert not (tmp_path / "stages").exists()  # a dry run writes nothing


def test_environment_overrides_tracking_and_ray():
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "RAY_ADDRESS": "127.0.0.1:6379"}
    assert env_overrides(env) == ["tracking.uri=http://127.0.0.1:5000", "ray.address=127.0.0.1:6379"]


def test_cli_evaluate_rejects_an_unknown_model_reference(tmp_path, capsys):
    args = ["evaluate", "--model", "not-a-model", "--out", str(tmp_path / "ev"), "--config", "configs/smoke.yaml",
            "--set", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}", "--set", f"work_dir={tmp_path / 'o'}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model not-a-model: not a checkpoint file" in err
    assert not (tmp_path / "ev").exists()


def test_cli_tune_refuses_bad_campaign_file(capsys):
    assert main(["tune", "--config", "configs/smoke.yaml", "--campaign", "missing.yaml"]) == 2
    assert "tune.campaign: file not found: missing.yaml" in capsys.readouterr().err


def test_cli_stage_choices_are_the_dags_stages():
    from pipeline.cli import STAGE_NAMES
    from pipeline.dag import stage_names

    assert list(STAGE_NAMES) == stage_names()


@pytest.mark.parametrize("command", ["run", "tune", "submit", "report", "promote", "rollback", "evaluate", "generate"])
def test_cli_help_describes_and_gives_examples(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "examples:" in out and f"ganpipe {command} " in out.split("examples:")[1]


def test_cli_version_and_environment(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("ganpipe ")
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(var in out for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAY_AUTH_TOKEN", "GLIBC_TUNABLES"))


def test_cli_usage_errors_are_one_line_with_status_2(capsys):
    assert main(["run", "--config", "configs/smoke.yaml", "--only", "evaluat"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'evaluat'" in err
    assert main(["run", "--config", "configs/smoke.yaml", "--only", "train", "--until", "tune"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--only and --until do not go together" in err


def test_tracking_patience_is_bounded_by_what_mlflow_can_retry():
    from components.errors import UserError
    from pipeline.config import load_config

    assert load_config("configs/smoke.yaml", ["tracking.patience_s=600"]).tracking.patience_s == 600
    with pytest.raises(UserError, match="patience_s"):
        load_config("configs/smoke.yaml", ["tracking.patience_s=5000"])


def test_a_relative_data_path_is_taken_from_where_the_command_runs(tmp_path, monkeypatch):
    from pipeline.config import load_config
    from tests.conftest import REPO

    monkeypatch.chdir(tmp_path)
    cfg = load_config(REPO / "configs" / "smoke.yaml", ["data.source=image_folder", "data.path=my_images"])
    assert cfg.data.path == str(tmp_path / "my_images")  # stages run in the work dir: a relative path would move
    remote = load_config(REPO / "configs" / "smoke.yaml", ["data.source=image_folder", "data.path=s3://b/imgs"])
    assert remote.data.path == "s3://b/imgs"


def test_the_shipped_configs_share_one_recipe():
    """configs/default.yaml and the GPU configs differ in data, widths and hardware, not in the recipe."""
    def recipe(cfg):
        return (cfg.data.rebalance, cfg.model.family, cfg.model.d_norm, cfg.model.d_conditioning, cfg.loss.objective,
                cfg.loss.r1_gamma, cfg.loss.lecam_lambda, tuple(cfg.loss.diffaugment), cfg.loss.ada_target,
                cfg.loss.gsr_lambda, cfg.train.ema_decay)

    default = recipe(load_config(REPO / "configs" / "default.yaml"))
    assert default[5] > 0 and default[7]  # R1 and DiffAugment are in it
    for name in ("color64-gpu.yaml", "cluster-gpu.yaml"):
        assert recipe(load_config(REPO / "configs" / name)) == default, name
