"""Cache keys: stage name + resolved config sections + code version + upstream output digests."""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

PACKAGE_ROOTS = ("components", "pipeline")


def source_digest() -> str:
    """sha256 of every .py file of the project's packages (catches uncommitted edits, works without git)."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for pkg in PACKAGE_ROOTS:
        for path in sorted((root / pkg).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def git_commit() -> str | None:
    """HEAD's commit id, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def stage_fingerprint(name: str, sections: dict, code_version: str, upstream_digests: dict[str, str]) -> str:
    """Deterministic hash of everything that determines a stage's outputs."""
    payload = {"stage": name, "config": sections, "code": code_version, "upstream": upstream_digests}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def directory_digest(path: Path) -> str:
    """sha256 over relative paths and bytes of every file under `path`."""
    h = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
