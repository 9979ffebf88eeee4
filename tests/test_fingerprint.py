"""Per-stage code fingerprints: a stage's cache key covers the code it runs, not comments and not modules it
never imports (the CLI, the report)."""
import shutil
from pathlib import Path

import pytest

from pipeline.dag import STAGES
from pipeline.fingerprint import code_digest, module_closure
from tests.conftest import REPO


def source_copy(tmp_path: Path) -> Path:
    """A copy of the project's packages to edit."""
    for pkg in ("components", "pipeline"):
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def stage_digests(root: Path) -> dict[str, str]:
    return {s.name: code_digest(s.fn.__module__, root) for s in STAGES}


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_no_stage_runs_the_cli_or_the_report():
    for stage in STAGES:
        files = {p.relative_to(REPO).as_posix() for p in module_closure(stage.fn.__module__)}
        assert f"pipeline/stages/{stage.name}.py" in files
        assert not files & {"pipeline/cli.py", "pipeline/report.py", "pipeline/runner.py"}, stage.name


def test_comments_and_the_report_leave_every_stage_key_unchanged(tmp_path):
    root = source_copy(tmp_path)
    before = stage_digests(root)
    assert before == stage_digests(REPO)  # the copy is the same code
    edit(root / "pipeline" / "report.py", "def build_html(", "# A reader's note.\ndef build_html(")
    edit(root / "pipeline" / "report.py", "def _fmt(v) -> str:", "def _fmt(v) -> str:  # how numbers look")
    edit(root / "pipeline" / "cli.py", "def main(", "# Another note.\ndef main(")
    edit(root / "components" / "losses.py", "def d_adversarial(", "# Reworded comment.\n\n\ndef d_adversarial(")
    assert stage_digests(root) == before


def test_a_code_change_moves_the_keys_of_the_stages_that_run_it(tmp_path):
    root = source_copy(tmp_path)
    before = stage_digests(root)
    edit(root / "components" / "losses.py", "return real, fake", "return real, fake * 1.0")
    after = stage_digests(root)
    changed = {name for name in before if before[name] != after[name]}
    assert {"train", "tune"} <= changed and "prepare" not in changed


@pytest.mark.parametrize("library", ["torch", "ray", "mlflow"])
def test_the_key_covers_library_versions(monkeypatch, library):
    from pipeline import fingerprint

    before = code_digest("pipeline.stages.prepare")
    real = fingerprint.metadata.version
    monkeypatch.setattr(fingerprint.metadata, "version", lambda name: "0.0.0" if name == library else real(name))
    assert code_digest("pipeline.stages.prepare") != before
