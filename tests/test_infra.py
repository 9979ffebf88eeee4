"""Static checks of infra/: KubeRay manifests against the v1.7.0 CRDs, pinned versions, entrypoints,
no committed secrets, and loopback-only defaults in local scripts."""
import re
import tomllib

import jsonschema
import pytest
import yaml

from tests.conftest import REPO

SCHEMAS = REPO.parent / "shared" / "schemas" / "kuberay-v1.7.0"
INFRA = REPO / "infra"


def crd_schema(kind: str) -> dict:
    crd = yaml.safe_load((SCHEMAS / f"ray.io_{kind.lower()}s.yaml").read_text())
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]


def pinned_ray() -> str:
    """The Ray that make installs and CI tests (constraints.txt), which the package's range must admit."""
    pin = re.search(r"^ray==([\d.]+)$", (REPO / "constraints.txt").read_text(), re.M).group(1)
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    allowed = next(d for d in deps if d.startswith("ray["))
    from packaging.requirements import Requirement

    assert Requirement(allowed.split("#")[0].strip()).specifier.contains(pin), (allowed, pin)
    return pin


def all_yaml():
    return sorted(p for p in INFRA.rglob("*.yaml")) + sorted((REPO / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", all_yaml(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_parses(path):
    assert yaml.safe_load(path.read_text()) is not None


@pytest.mark.skipif(not SCHEMAS.exists(), reason="shared/schemas not present")
@pytest.mark.parametrize("path", sorted((INFRA / "kuberay").glob("*.yaml")), ids=lambda p: p.name)
def test_kuberay_manifest_matches_crd(path):
    doc = yaml.safe_load(path.read_text())
    jsonschema.Draft4Validator(crd_schema(doc["kind"])).validate(doc)


@pytest.mark.skipif(not SCHEMAS.exists(), reason="shared/schemas not present")
def test_crd_validation_catches_a_bad_manifest():
    doc = yaml.safe_load((INFRA / "kuberay" / "raycluster.yaml").read_text())
    doc["spec"]["workerGroupSpecs"][0]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError, match="'two' is not of type 'integer'"):
        jsonschema.Draft4Validator(crd_schema("RayCluster")).validate(doc)


def test_rayjob_has_gpu_workers_shutdown_and_token_auth():
    job = yaml.safe_load((INFRA / "kuberay" / "rayjob.yaml").read_text())["spec"]
    assert job["shutdownAfterJobFinishes"] is True
    assert job["rayClusterSpec"]["authOptions"]["mode"] == "token"
    worker = job["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert all("secretKeyRef" in e["valueFrom"] for e in worker["env"])


def test_ray_version_everywhere_equals_the_pin():
    pin = pinned_ray()
    for path in sorted((INFRA / "kuberay").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        assert spec["rayVersion"] == pin, path
        assert all(f":{pin}" in img for img in re.findall(r"image: (\S+)", path.read_text())), path
    assert f'"ray[default,train,tune]=={pin}"' in (INFRA / "docker" / "Dockerfile").read_text()


def test_entrypoints_name_real_modules_and_configs():
    text = (INFRA / "kuberay" / "rayjob.yaml").read_text()
    entry = yaml.safe_load(text)["spec"]["entrypoint"].split()
    assert entry[:3] == ["python", "-m", "pipeline"]
    assert (REPO / "pipeline" / "__main__.py").exists()
    config = entry[entry.index("--config") + 1]
    assert (REPO / config).exists()
    from pipeline.config import load_config

    load_config(REPO / config)  # the production config validates


SECRET = re.compile(r"(password|secret|token|access_key)\s*[:=]\s*['\"]?(?!\$\{)[A-Za-z0-9/+_-]{6,}", re.I)


@pytest.mark.parametrize("path", [p for p in INFRA.rglob("*") if p.is_file()], ids=lambda p: p.name)
def test_no_secret_literals(path):
    for line in path.read_text().splitlines():
        if "secretKeyRef" in line or "${" in line or line.strip().startswith("#"):
            continue
        assert not SECRET.search(line), f"{path}: {line.strip()}"


def test_local_scripts_bind_loopback():
    mlflow_script = (INFRA / "mlflow" / "start.sh").read_text()
    assert "HOST=127.0.0.1" in mlflow_script and "0.0.0.0" not in mlflow_script
    compose = yaml.safe_load((INFRA / "mlflow" / "docker-compose.yaml").read_text())
    for service in compose["services"].values():
        assert all(str(p).startswith("127.0.0.1:") for p in service.get("ports", []))
    launcher = (INFRA / "cluster-launcher" / "aws-gpu.yaml").read_text()
    assert "--dashboard-host=127.0.0.1" in launcher
    local = INFRA / "local" / "cluster.py"
    if local.exists():
        text = local.read_text()
        assert "127.0.0.1" in text and "0.0.0.0" not in text


def test_submitted_jobs_give_their_workers_the_pipelines_malloc_settings():
    from components.training.allocator import MALLOC_TUNABLES

    runtime_env = yaml.safe_load((INFRA / "runtime_env.yaml").read_text())
    rayjob = yaml.safe_load((INFRA / "kuberay" / "rayjob.yaml").read_text())
    for env in (runtime_env, yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])):
        assert env["env_vars"]["GLIBC_TUNABLES"] == MALLOC_TUNABLES


def test_the_compose_stack_takes_its_secrets_from_files_and_gives_mlflow_what_it_needs():
    text = (INFRA / "mlflow" / "docker-compose.yaml").read_text()
    compose = yaml.safe_load(text)
    services = compose["services"]
    for name, service in services.items():  # no password in an environment value or a command line
        for key, value in (service.get("environment") or {}).items():
            assert "PASSWORD" not in key or key.endswith("_FILE"), (name, key)
        assert "${" not in str(service.get("command", "")), name
    assert set(compose["secrets"]) >= {"postgres_password", "minio_root_password", "minio_mlflow_password"}
    assert "MINIO_ROOT" not in str(services["mlflow"]) and services["mlflow"]["environment"]["AWS_ACCESS_KEY_ID"] == "mlflow"
    assert "mc mb --ignore-existing local/mlflow-artifacts" in str(services["minio-init"]["command"])
    dockerfile = (INFRA / "mlflow" / services["mlflow"]["build"]["dockerfile"]).read_text()
    assert "psycopg2" in dockerfile and "boto3" in dockerfile
    assert "--app-name basic-auth" in str(services["mlflow"]["command"])
