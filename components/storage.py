"""Artifact storage: a local directory or any pyarrow filesystem URI (s3://, gs://, hdfs://, file://).

Locations are URIs. Code that needs files on its own disk calls `localize`, which is the path itself for
local storage and a node-local copy (cached by URI; stage outputs never change once written) otherwise.
Query parameters of the root (for example `?endpoint_override=127.0.0.1:9000&scheme=http` for MinIO)
apply to every location under it.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from components.errors import UserError


_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<secret>[^@/\s]+)@")
_SECRET_QUERY = re.compile(r"(?P<name>[?&;](?:[a-z0-9_]*(?:secret|password|passwd|token|access_key|credential|"
                           r"signature|sig|session)[a-z0-9_]*))=(?P<value>[^&#\s'\"]*)", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with the credentials of any URI in it masked: a password in user:password@host, and query values
    whose names say secret, password, token, access key, credential, signature or session. Used on every URI
    that is logged, tagged, written to config.yaml or printed."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _SECRET_QUERY.sub(lambda m: f"{m['name']}=***", text)


def is_remote(uri: str | os.PathLike) -> bool:
    """True for URIs with a scheme other than file:// (a Windows drive letter is not a scheme)."""
    scheme = urlsplit(str(uri)).scheme
    return len(scheme) > 1 and scheme != "file"


def join(uri: str | os.PathLike, *parts: str) -> str:
    """uri/part/part, keeping the root's query string at the end."""
    if not is_remote(uri):
        return str(Path(str(uri).removeprefix("file://"), *parts))
    s = urlsplit(str(uri))
    path = "/".join([s.path.rstrip("/"), *[p.strip("/") for p in parts]])
    return urlunsplit((s.scheme, s.netloc, path, s.query, ""))


@dataclass(frozen=True)
class Location:
    """A resolved URI: its pyarrow filesystem and the path on it."""

    uri: str

    @property
    def remote(self) -> bool:
        return is_remote(self.uri)

    def fs_and_path(self):
        import pyarrow.fs as pafs

        if not self.remote:
            return pafs.LocalFileSystem(), str(Path(self.uri.removeprefix("file://")).resolve())
        try:
            return pafs.FileSystem.from_uri(self.uri)
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a bad URI
            raise UserError(f"storage.uri: cannot open {self.uri} ({str(err).splitlines()[0]}); use a local "
                            "path or a URI pyarrow supports, e.g. s3://bucket/prefix") from None

    def child(self, *parts: str) -> "Location":
        return Location(join(self.uri, *parts))

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        fs, path = self.fs_and_path()
        return fs.get_file_info(path).type != pafs.FileType.NotFound

    def read_text(self) -> str:
        fs, path = self.fs_and_path()
        with fs.open_input_stream(path) as f:
            return f.read().decode()

    def write_text(self, text: str) -> None:
        fs, path = self.fs_and_path()
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(text.encode())

    def delete(self) -> None:
        """Remove the directory tree here, if any."""
        if self.exists():
            fs, path = self.fs_and_path()
            fs.delete_dir(path)

    def delete_file(self) -> None:
        """Remove the file here, if any."""
        if self.exists():
            fs, path = self.fs_and_path()
            fs.delete_file(path)

    def upload(self, local_dir: Path) -> None:
        """Copy local_dir's tree here (files already here with other names are removed first)."""
        import pyarrow.fs as pafs

        self.delete()
        fs, path = self.fs_and_path()
        fs.create_dir(path, recursive=True)
        pafs.copy_files(str(Path(local_dir).resolve()), path, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)

    def upload_file(self, local_file: Path) -> None:
        import pyarrow.fs as pafs

        fs, path = self.fs_and_path()
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(str(Path(local_file).resolve()), path, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)

    def download(self, local_dir: Path) -> Path:
        import pyarrow.fs as pafs

        fs, path = self.fs_and_path()
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        pafs.copy_files(path, str(Path(local_dir).resolve()), source_filesystem=fs,
                        destination_filesystem=pafs.LocalFileSystem())
        return Path(local_dir)


def ray_storage_args(uri: str | os.PathLike) -> tuple[str, object | None]:
    """(storage_path, storage_filesystem) for Ray Train/Tune: a plain absolute path for local storage (Ray's
    own default handling), the path on an explicit pyarrow filesystem for a URI (keeps its query options)."""
    if not is_remote(uri):
        return str(Path(str(uri).removeprefix("file://")).resolve()), None
    fs, path = Location(str(uri)).fs_and_path()
    return path, fs


def local_cache_root() -> Path:
    """Node-local cache of downloaded artifacts (GANPIPE_CACHE, else the system temp dir): a directory only
    this user can read or write (0700), refused if another user owns it. In a shared /tmp another user could
    otherwise create it first and plant the data and checkpoints this node trains on."""
    root = Path(os.environ.get("GANPIPE_CACHE") or Path(tempfile.gettempdir()) / f"ganpipe-cache-{os.getuid()}")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = root.stat()
    if info.st_uid != os.getuid():
        raise UserError(f"cache directory {root} belongs to uid {info.st_uid}, not to you (uid {os.getuid()}); "
                        "remove it or set GANPIPE_CACHE to a directory of your own")
    if info.st_mode & 0o077:
        root.chmod(0o700)
    return root


def _listing(fs, path: str, info) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of the file at `path`, or of every file under it."""
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True)) if info.type == pafs.FileType.Directory \
        else [info]
    return sorted((i.path, i.size, i.mtime_ns) for i in infos if i.type == pafs.FileType.File)


def listing_fingerprint(uri: str | os.PathLike) -> str:
    """sha256 of the paths, sizes and modification times under a local path or storage URI: a file added,
    removed, replaced or touched changes it; reading no file content keeps it cheap on large folders. Local
    names need not be valid UTF-8 (prepare says what is wrong with them), and nothing is opened, so a FIFO
    cannot block it."""
    if is_remote(uri):
        import pyarrow.fs as pafs

        fs, path = Location(str(uri)).fs_and_path()
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise UserError(f"data.path not found: {uri} (check the bucket, prefix and credentials)")
        base = path.rstrip("/")
        rows = [(p.removeprefix(base), size, mtime) for p, size, mtime in _listing(fs, path, info)]
        return hashlib.sha256(repr(rows).encode()).hexdigest()
    root = Path(str(uri).removeprefix("file://")).expanduser()
    if not root.exists():
        raise UserError(f"data.path not found: {root} (check the path, or use source 'digits' for the bundled set)")
    h = hashlib.sha256()
    walk = [(str(root.parent), [], [root.name])] if not root.is_dir() else os.walk(root)
    for folder, dirs, files in walk:
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            info = os.lstat(path)
            h.update(repr((os.fsencode(os.path.relpath(path, root)), info.st_size, info.st_mtime_ns,
                           info.st_mode)).encode())
    return h.hexdigest()


def localize(uri: str | os.PathLike) -> Path:
    """A local path holding what `uri` names (a file or a directory tree). Local URIs are returned as they
    are. Remote ones are downloaded into the node-local cache, keyed by the URI and the listing (paths,
    sizes, modification times), so a republished location is fetched again and an unchanged one is not;
    the copy is renamed into place whole, so concurrent callers on one node never see half of it."""
    if not is_remote(uri):
        local = Path(str(uri).removeprefix("file://"))
        if not local.exists():
            raise FileNotFoundError(f"{uri} does not exist")
        return local
    import pyarrow.fs as pafs

    loc = Location(str(uri))
    fs, path = loc.fs_and_path()
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{uri} does not exist")
    key = hashlib.sha256(repr((loc.uri, _listing(fs, path, info))).encode())
    root = local_cache_root()
    target = root / key.hexdigest()[:24] / (path.rstrip("/").rsplit("/", 1)[-1] or "root")
    if target.exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        if info.type == pafs.FileType.Directory:
            loc.download(staging / target.name)
        else:
            pafs.copy_files(path, str(staging / target.name), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(staging / target.name, target)
        except OSError:  # another process on this node got there first
            if not target.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
