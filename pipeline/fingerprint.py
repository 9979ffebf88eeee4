"""Cache keys: stage name + resolved config sections + code version + upstream output digests."""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGE_ROOTS = ("components", "pipeline")


def source_digest() -> str:
    """sha256 of every .py file of the project's packages (the pipeline run's tag; stages use code_digest)."""
    root = ROOT
    h = hashlib.sha256()
    for pkg in PACKAGE_ROOTS:
        for path in sorted((root / pkg).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("torch", "ray", "mlflow")


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The source file of project module `name` (a.b -> a/b.py or a/b/__init__.py), or None."""
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(path: Path) -> set[str]:
    """Project modules named by the file's import statements, function-level imports included; importing
    a.b.c also runs a and a.b, so their packages count too."""
    return _source_facts(path, *_stamp(path))[1]


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=1024)
def _source_facts(path: Path, size: int, mtime_ns: int) -> tuple[str, frozenset[str]]:
    """(syntax-tree dump, project modules it imports) of one file, parsed once per version of the file:
    every stage's digest shares most of its files."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return ast.dump(tree), frozenset(n for n in found if n.split(".")[0] in PACKAGE_ROOTS)


def module_closure(module: str, root: Path = ROOT) -> list[Path]:
    """Every project source file that importing `module` runs, found statically, sorted."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        path = module_file(name, root)
        if name in seen or path is None:
            continue
        seen[name] = path
        todo.extend(imported_modules(path) - seen.keys())
    return sorted(set(seen.values()))


def code_digest(module: str, root: Path = ROOT) -> str:
    """What a stage's outputs depend on in code: the syntax trees of the project files `module` runs (so
    comments and layout do not count, and neither do modules it never imports, such as the CLI or the
    report), plus the installed versions of torch, ray and mlflow."""
    h = hashlib.sha256()
    for path in module_closure(module, root):
        h.update(str(path.relative_to(root)).encode())
        h.update(_source_facts(path, *_stamp(path))[0].encode())
    for lib in LIBRARIES:
        try:
            h.update(f"{lib}=={metadata.version(lib)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{lib} absent".encode())
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


def directory_digest(path: Path, exclude: tuple[str, ...] = ()) -> str:
    """sha256 over relative paths and bytes of every file under `path` (files named in `exclude` left out)."""
    h = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file() and p.name not in exclude):
        h.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
