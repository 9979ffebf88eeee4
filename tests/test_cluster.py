"""Beyond one machine, on loopback: a 2-node Ray cluster (token auth on), a local MLflow server, the smoke
pipeline submitted as a Ray job, and a node lost while a stage runs on it."""
import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, s3_uri

sys.path.insert(0, str(REPO / "infra" / "local"))
import cluster  # noqa: E402

pytestmark = pytest.mark.slow
SECRET = "PLANTEDSECRET123"


@pytest.fixture(scope="module")
def two_node_cluster():
    info = cluster.start(workers=1, cpus_per_node=1, worker_resources={"stage_host": 1})
    try:
        yield info
    finally:
        cluster.stop(info["temp_dir"])
    assert not cluster.own_pids(info["temp_dir"])


def test_cluster_script_starts_and_stops_only_its_own_processes(two_node_cluster):
    out = subprocess.run([sys.executable, "-c", (
        "import ray; ray.init(address='%s', logging_level='error');"
        "print(sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']))") % two_node_cluster["address"]],
        capture_output=True, text=True, env={**os.environ, "RAY_AUTH_MODE": "token",
                                             "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}, timeout=120)
    assert "['127.0.0.2', '127.0.0.3']" in out.stdout, out.stderr[-800:]
    assert cluster.own_pids(two_node_cluster["temp_dir"])


def test_submit_smoke_pipeline_as_ray_job(two_node_cluster, mlflow_server, s3_endpoint, tmp_path):
    """The DAG as one Ray job: every stage a Ray task, every output and checkpoint in S3 (moto on 127.0.0.1),
    nothing in the job's work dir; a rerun from another process finds it all cached in S3."""
    from mlflow.tracking import MlflowClient

    from components.storage import Location, join
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    env.pop("RAY_ADDRESS", None)
    bucket = s3_uri(s3_endpoint, f"cluster-{os.getpid()}/smoke")
    sets = [f"work_dir={tmp_path / 'driver'}", "ray.num_cpus=null", f"storage.uri={bucket}",
            "train.steps=10", "train.report_every=5", "train.checkpoint_every=5",
            'tune.search_space={"train.lr_g": {type: grid, values: [0.0002]}}']
    # S3 credentials reach the job through a private file on the cluster's (here: this) disk, not the job record.
    secrets = tmp_path / "secrets.env"
    secrets.write_text("".join(f"{k}={os.environ[k]}\n" for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")))
    secrets.chmod(0o600)
    env["AWS_SECRET_ACCESS_KEY"] = "not-the-job-secret-" + os.environ["AWS_SECRET_ACCESS_KEY"]  # must not travel
    cmd = [sys.executable, "-m", "pipeline", "submit", "--address", two_node_cluster["dashboard"],
           "--config", "configs/smoke.yaml", "--follow", "--secrets-file", str(secrets),
           *[x for o in sets for x in ("--set", o)]]
    # A credential in the command would sit in the job record in clear: refused before anything is sent.
    leaky = [c.replace("s3://", f"s3://testing:{SECRET}@", 1) if c.startswith("storage.uri=") else c for c in cmd]
    refused = subprocess.run(leaky, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "holds a credential" in refused.stderr and SECRET not in refused.stderr
    job = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    (tmp_path.parent / "job.log").write_text(job.stdout + job.stderr)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-2000:]
    assert "SUCCEEDED" in job.stdout and "train: running as a Ray task" in job.stdout
    submission = job.stdout.split("submitted ", 1)[1].split()[0]
    record = subprocess.run([sys.executable, "-c", (  # a fresh process: Ray reads RAY_AUTH_MODE at import
        "import json, sys; from ray.job_submission import JobSubmissionClient;"
        "print(json.dumps(JobSubmissionClient(sys.argv[1]).get_job_info(sys.argv[2]).runtime_env))"),
        two_node_cluster["dashboard"], submission], capture_output=True, text=True, timeout=120,
        env={**os.environ, "RAY_AUTH_MODE": "token"})
    runtime_env = json.loads(record.stdout.strip().splitlines()[-1])
    assert "AWS_SECRET_ACCESS_KEY" not in json.dumps(runtime_env)
    assert runtime_env["env_vars"]["GANPIPE_SECRETS_FILE"] == str(secrets)

    client = MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias("ganpipe-smoke", "challenger")
    assert version.version
    experiments = [e.experiment_id for e in client.search_experiments()]
    train_runs = client.search_runs(experiments, filter_string="tags.stage = 'train'")
    nodes = set(train_runs[0].data.tags["worker_nodes"].split(","))
    assert len(nodes) == 2  # one DDP rank on each node
    parent = client.get_run(train_runs[0].data.tags["mlflow.parentRunId"])
    assert parent.data.tags["stage_executor"] == "ray-task"
    stage_runs = client.search_runs(experiments, f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags["stage"] for r in stage_runs) == ["evaluate", "prepare", "promote", "train", "tune"]
    for run in stage_runs:  # ran elsewhere than the job's driver, and published to S3
        assert run.data.tags["executor_pid"] != parent.data.tags["driver_pid"]
        uri = join(bucket, "stages", run.data.tags["stage"], run.data.tags["fingerprint"][:16], "_stage.json")
        assert Location(uri).exists(), uri
    assert Location(join(bucket, "ray_results")).exists()  # Ray Train and Tune checkpoints
    assert not (tmp_path / "driver" / "stages").exists()

    rerun = run_pipeline(load_config(REPO / "configs" / "smoke.yaml", [*sets, f"tracking.uri={mlflow_server}",
                                                                      f"work_dir={tmp_path / 'laptop'}"]))
    assert rerun["cached"] == ["prepare", "train", "tune", "evaluate", "promote"]


def test_submit_without_token_fails_clearly(tmp_path, monkeypatch):
    from components.errors import UserError
    from pipeline.submit import require_token

    with pytest.raises(UserError, match="no Ray auth token"):
        require_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})


def test_submit_a_campaign_as_a_ray_job(two_node_cluster, mlflow_server, tmp_path):
    """Any subcommand can be a job: here a campaign (`tune --campaign`), its trials on the cluster's nodes and
    its trial runs in the shared MLflow server."""
    from mlflow.tracking import MlflowClient

    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    env.pop("RAY_ADDRESS", None)
    sets = [f"work_dir={tmp_path / 'job'}", "ray.num_cpus=null", "ray.stage_tasks=never", "train.steps=10",
            "train.report_every=5", "train.checkpoint_every=5", "tune.steps=10", "tune.report_every=5",
            "tune.window=5", 'tune.search_space={"train.lr_g": {type: grid, values: [0.0002, 0.001]}}']
    cmd = [sys.executable, "-m", "pipeline", "submit", "--address", two_node_cluster["dashboard"], "--follow", "--",
           "tune", "--config", "configs/smoke.yaml", "--campaign", "configs/tune/lr-batch.yaml",
           *[x for o in sets for x in ("--set", o)]]
    job = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    (tmp_path.parent / "campaign-job.log").write_text(job.stdout + job.stderr)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-2000:]
    assert "submitted ganpipe-tune-smoke-" in job.stdout and "SUCCEEDED" in job.stdout
    assert "best config (stability score" in job.stdout

    client = MlflowClient(mlflow_server)
    experiments = [e.experiment_id for e in client.search_experiments()]
    tune_run = client.search_runs(experiments, filter_string="tags.stage = 'tune'")[0]
    trials = client.search_runs(experiments, f"tags.mlflow.parentRunId = '{tune_run.info.run_id}'")
    assert len(trials) == 2 and {t.info.status for t in trials} == {"FINISHED"}  # lr grid x the smoke batch
    assert not client.search_runs(experiments, "tags.stage = 'promote'")  # tune stops after the tune stage


def test_a_node_lost_while_a_stage_runs_on_it_reruns_the_stage_on_its_replacement(two_node_cluster, tmp_path):
    """Stage tasks need the `stage_host` resource, which only worker nodes declare. The one running prepare
    is SIGKILLed mid-publish (held there by the test hook its node's environment sets); Ray reruns the task on
    the node that replaces it, and the stage publishes whole."""
    from mlflow.tracking import MlflowClient

    from pipeline.outputs import output_problem, read_marker
    from tests.conftest import smoke_overrides

    info, first, replacement = two_node_cluster, "127.0.0.3", "127.0.0.4"
    cluster.kill_node(info, first)  # make way for a node that stops in publish
    cluster.start_node(info, replacement, resources={"stage_host": 1},
                       env={"GANPIPE_TEST_PUBLISH_PAUSE_S": "300"})
    sets = [*smoke_overrides(tmp_path), f"ray.address={info['address']}", "ray.stage_tasks=always",
            "ray.stage_task_resources={stage_host: 1}", "ray.stage_task_retries=1"]
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--config", "configs/smoke.yaml", "--only",
                             "prepare", *[x for o in sets for x in ("--set", o)]], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, killed = [], 0
    for line in proc.stdout:
        seen.append(line)
        if not killed and "publish: between renames" in line:
            killed = cluster.kill_node(info, replacement)
            cluster.start_node(info, first, resources={"stage_host": 1})
    proc.wait(timeout=600)
    out = "".join(seen)
    assert killed and proc.returncode == 0, out[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {r.info.status for r in runs} == {"FINISHED"}
    (prepare,) = [r for r in runs if r.info.run_name == "prepare"]
    assert not re.search(rf"pid={prepare.data.tags['executor_pid']}\b.*publish: between renames", out)  # a rerun
    (final,) = (tmp_path / "outputs" / "stages" / "prepare").iterdir()
    assert output_problem(str(final), read_marker(str(final)), full=True) is None
    assert read_marker(str(final))["run_id"] == prepare.info.run_id
