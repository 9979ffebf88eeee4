"""A stage's published outputs: the `_stage.json` marker, how it is checked, how outputs replace each other.

A stage directory is cached only when its marker is there *and* still describes it: the marker lists every
file with its size (checked on every cache hit) and a content digest (checked under `--verify`). Outputs are
published by renaming the new directory in and the old one aside, so a kill at any point leaves one whole
version in place or recoverable. One lock per stage output keeps two runs of one config from computing and
publishing the same output at once.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from pathlib import Path

from components.storage import Location, is_remote, join

MARKER = "_stage.json"
ASIDE = ".old-"  # prefix of an output renamed aside while its replacement moves in


def file_listing(root: Path) -> dict[str, int]:
    """Relative path -> size of every file under a local directory, the marker left out."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.stat().st_size
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MARKER}


def remote_listing(uri: str) -> dict[str, int]:
    """file_listing for a storage URI."""
    import pyarrow.fs as pafs

    fs, path = Location(uri).fs_and_path()
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    base = path.rstrip("/") + "/"
    return {i.path.removeprefix(base): i.size for i in sorted(infos, key=lambda i: i.path)
            if i.type == pafs.FileType.File and not i.path.endswith("/" + MARKER)}


def listing_of(uri: str) -> dict[str, int]:
    return remote_listing(uri) if is_remote(uri) else file_listing(Path(uri))


def read_marker(uri: str) -> dict | None:
    """The record of a finished stage run at `uri`, or None if there is none (never ran, or did not finish)."""
    marker = Location(join(uri, MARKER))
    try:
        return json.loads(marker.read_text()) if marker.exists() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a torn or foreign marker is no record


def output_problem(uri: str, record: dict, full: bool = False) -> str | None:
    """Why the outputs at `uri` no longer match their marker, or None. Sizes always; the content digest too
    when `full` (that reads every byte)."""
    from pipeline.fingerprint import directory_digest

    expected = record.get("listing")
    if expected is None:
        return "its marker has no file listing (written by an older version)"
    found = listing_of(uri)
    if found != expected:
        missing = sorted(set(expected) - set(found))
        changed = sorted(k for k in expected if k in found and found[k] != expected[k])
        extra = sorted(set(found) - set(expected))
        what = (f"missing {missing[0]}" if missing else f"size of {changed[0]} changed" if changed
                else f"unexpected file {extra[0]}")
        return f"outputs differ from their marker ({what})"
    if full:
        from components.storage import localize

        if directory_digest(localize(uri), exclude=(MARKER,)) != record["digest"]:
            return "output content digest differs from its marker"
    return None


def remove_stale_scratch(final: Path) -> int:
    """Delete the scratch directories of earlier attempts at this output (left by a SIGKILL or a full disk).
    Only called under the output's lock, so none of them belongs to a live attempt. Returns how many."""
    stale = list(final.parent.glob(f".tmp-{final.name}-*")) if final.parent.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return len(stale)


def recover_aside(final: Path) -> bool:
    """If a publish was killed after renaming the old output aside, put the old one back. True if it did."""
    if final.exists():
        return False
    for aside in sorted(final.parent.glob(f"{ASIDE}{final.name}-*")):
        if (aside / MARKER).is_file():
            os.replace(aside, final)
            return True
    return False


def write_marker(file, record: dict) -> None:
    """Write a marker record to `file`: a local Path or a storage Location."""
    file.write_text(json.dumps(record, indent=2))


def publish_local(out: Path, final: Path, record: dict) -> None:
    """Move `out` to `final` with its marker: the old output is renamed aside (not deleted) first, so a kill
    between the two renames leaves it for `recover_aside`; it is deleted only once the new one is in."""
    write_marker(out / MARKER, record)
    aside = final.parent / f"{ASIDE}{final.name}-{os.getpid()}"
    if final.exists():
        os.replace(final, aside)
    _between_renames()
    os.replace(out, final)
    shutil.rmtree(aside, ignore_errors=True)
    for stale in final.parent.glob(f"{ASIDE}{final.name}-*"):  # left by killed publishes of this output
        shutil.rmtree(stale, ignore_errors=True)


def _between_renames() -> None:
    """Test hook: GANPIPE_TEST_PUBLISH_PAUSE_S holds a publish between its two renames for that many seconds,
    or until the file GANPIPE_TEST_PUBLISH_RESUME_FILE exists, so a test can act there."""
    pause = float(os.environ.get("GANPIPE_TEST_PUBLISH_PAUSE_S", "0") or 0)
    if pause:
        print("publish: between renames", flush=True)
        resume = os.environ.get("GANPIPE_TEST_PUBLISH_RESUME_FILE")
        deadline = time.monotonic() + pause
        while time.monotonic() < deadline and not (resume and os.path.exists(resume)):
            time.sleep(0.1)


def publish(out: Path, final_uri: str, record: dict) -> None:
    """Publish the finished outputs; the marker goes last, so readers never see half a stage."""
    if not is_remote(final_uri):
        publish_local(out, Path(final_uri), record)
        return
    loc = Location(final_uri)
    loc.child(MARKER).delete_file()  # first: from here until the new marker, the location is not cached
    loc.upload(out)
    write_marker(loc.child(MARKER), record)


@contextlib.contextmanager
def stage_lock(lock_dir: Path, stage: str, fingerprint: str, owner: str, announce=print):
    """Hold an exclusive lock on one stage output while it is checked, computed and published. A second
    process with the same fingerprint waits here (saying for whom), then finds the output cached. The lock is
    an flock: the kernel drops it when its holder dies, so a killed run never blocks the next one. It guards
    runs whose drivers share this disk."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / f"{stage}-{fingerprint[:16]}.lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            announce(f"  {stage}: waiting for {holder}, which is computing this output")
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(owner)
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)
