"""Array-file sources: Parquet tables, CIFAR python pickles (restricted), MNIST IDX files."""
from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import numpy as np

from components.data.sources import RawImages, _collect, _require_path
from components.errors import UserError, first_line

CIFAR_ROW = 3 * 32 * 32
MAX_BATCH_BYTES = 1 << 30  # a genuine CIFAR batch is about 30 MB


def _parquet_files(path: Path) -> list[Path]:
    files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
    if not files:
        raise UserError(f"no .parquet files in {path}")
    return files


def _read_parquet(file: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(file)
    except (pa.ArrowException, OSError) as err:
        raise UserError(f"{file}: not a readable Parquet file ({first_line(err, 120)}); "
                        "re-export it, or move it out of data.path") from None


def load_parquet(cfg) -> RawImages:
    """Parquet with an image column (encoded bytes, or a fixed-shape uint8 array) and an integer label column.
    Every file holds the same kind of image column."""
    images, labels, skipped, resized, kinds = [], [], [], 0, {}
    for file in parquet_files(cfg):
        table = _read_parquet(file)
        file_labels = check_parquet_table(file, table.schema, table.num_rows, table.column(cfg.label_column)
                                          if cfg.label_column in table.column_names else None, cfg)
        encoded = image_kind(file, table.schema, cfg, kinds) == "encoded images"
        if encoded:
            col = table.column(cfg.image_column)
            raw = _collect([(b, int(y), f"{file} row {i}") for i, (b, y) in enumerate(zip(col.to_pylist(), file_labels))],
                           cfg, str(file), [])
            images.append(raw.images_nhwc)
            labels.append(raw.labels)
            skipped += raw.skipped
            resized += raw.resized
        else:
            images.append(_fixed_shape_rows(file, table, cfg))
            labels.append(file_labels)
    labels_all = np.concatenate(labels)
    names = [str(c) for c in range(int(labels_all.max()) + 1)] if len(labels_all) else []
    return RawImages(np.concatenate(images), labels_all, names, f"parquet {cfg.path}", skipped, resized)


def parquet_files(cfg) -> list[Path]:
    """The Parquet files of data.path (one file, or every *.parquet in a folder), in order."""
    return _parquet_files(_require_path(cfg))


def check_parquet_table(file: Path, schema, num_rows: int, label_col, cfg) -> np.ndarray:
    """Validate a file's columns, rows and labels (label_col: its label column, None if missing); returns
    the labels as int64."""
    import pyarrow as pa

    missing = [c for c in (cfg.image_column, cfg.label_column) if c not in schema.names]
    if missing:
        raise UserError(f"{file}: missing column(s) {missing}; it has {schema.names}. "
                        "Set data.image_column / data.label_column")
    if num_rows == 0:
        raise UserError(f"{file}: no rows; remove the empty file from data.path")
    label_type = schema.field(cfg.label_column).type
    if not pa.types.is_integer(label_type):
        raise UserError(f"{file}: label column '{cfg.label_column}' has type {label_type}; labels must be "
                        "integers (map class names to 0..C-1 first)")
    if label_col.null_count:
        row = next(i for i, v in enumerate(label_col.to_pylist()) if v is None)
        raise UserError(f"{file} row {row}: no label (null); every row needs an integer label")
    return label_col.to_numpy().astype(np.int64)


def image_kind(file: Path, schema, cfg, kinds: dict[str, Path]) -> str:
    """'encoded images' or 'arrays' for this file's image column; refuses a data set that mixes the two
    (`kinds` remembers the first file of each kind seen)."""
    import pyarrow as pa

    col_type = schema.field(cfg.image_column).type
    encoded = pa.types.is_binary(col_type) or pa.types.is_large_binary(col_type)
    kind = "encoded images" if encoded else "arrays"
    kinds.setdefault(kind, file)
    if len(kinds) > 1:
        other = next(f for k, f in kinds.items() if k != kind)
        raise UserError(f"{file}: column '{cfg.image_column}' holds {kind} but {other} holds "
                        f"{'arrays' if encoded else 'encoded images'}; use one kind of file per data set")
    return kind


def _fixed_shape_rows(file: Path, table, cfg, row_label: str = "row") -> np.ndarray:
    """Rows of a list<uint8> column reshaped to (H, W, C); every row must match the declared shape.
    row_label names a row in errors when `table` is one row group of the file."""
    import pyarrow.compute as pc

    meta = (table.schema.metadata or {}).get(b"image_shape_hwc")
    shape = tuple(cfg.image_shape or (json.loads(meta) if meta else ()))
    if not shape:
        raise UserError(f"{file}: column '{cfg.image_column}' holds arrays of varying or unknown shape; "
                        "set data.image_shape: [H, W, C]")
    want = int(np.prod(shape))
    col = table.column(cfg.image_column).combine_chunks()
    lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero((lengths != want) | np.asarray(col.is_null().to_numpy(zero_copy_only=False)))
    if len(bad):
        i = int(bad[0])
        raise UserError(f"{file} {row_label} {i}: image has {int(lengths[i])} values but "
                        f"data.image_shape {list(shape)} needs {want}")
    values = col.flatten().to_numpy(zero_copy_only=False)
    if values.dtype != np.uint8:
        if len(values) and (values.min() < 0 or values.max() > 255):
            raise UserError(f"{file}: column '{cfg.image_column}' has values in [{values.min()}, {values.max()}]; "
                            "array images must be uint8 (0..255)")
        values = values.astype(np.uint8)
    return values.reshape(len(col), *shape)


class _Disallowed(pickle.UnpicklingError):
    """A global outside RestrictedUnpickler.ALLOWED."""


class RestrictedUnpickler(pickle.Unpickler):
    """Builds only numpy arrays and plain containers: any other global is refused before it is called."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise _Disallowed(f"global '{module}.{name}' is not allowed")
        return super().find_class(module, name)


def _load_cifar_pickle(path: Path) -> dict:
    """A CIFAR batch, unpickled from memory: a length that claims more bytes than the file has is then a
    truncated file, not a 2 GiB allocation."""
    import io

    if path.stat().st_size > MAX_BATCH_BYTES:
        raise UserError(f"{path}: {path.stat().st_size} bytes is too large for a CIFAR batch")
    try:
        batch = RestrictedUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except _Disallowed as err:
        raise UserError(f"{path}: refused to unpickle ({err}); CIFAR batches hold only arrays, lists and "
                        "strings, so this file is not a genuine CIFAR batch") from None
    except (pickle.UnpicklingError, EOFError, ValueError, MemoryError, OverflowError) as err:
        raise UserError(f"{path}: truncated or corrupt CIFAR batch ({type(err).__name__})") from None
    if not isinstance(batch, dict):
        raise UserError(f"{path}: not a CIFAR batch (a {type(batch).__name__}, not a dict)")
    return batch


def load_cifar(cfg) -> RawImages:
    """CIFAR-10 (data_batch_1..5) or CIFAR-100 (train) python-version batches from a local folder."""
    root = _require_path(cfg)
    batches = sorted(root.glob("data_batch_*")) or sorted(root.glob("train"))
    if not batches:
        raise UserError(f"{root}: no CIFAR training batches (data_batch_* or train)")
    images, labels = [], []
    for path in batches:
        batch = _load_cifar_pickle(path)
        key = b"labels" if b"labels" in batch else b"fine_labels"
        if b"data" not in batch or key not in batch:
            raise UserError(f"{path}: not a CIFAR batch (needs b'data' and b'labels' or b'fine_labels')")
        try:
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            batch_labels = np.asarray(batch[key], dtype=np.int64)
        except (TypeError, ValueError):
            raise UserError(f"{path}: data must be uint8 rows and labels must be integers") from None
        if data.ndim != 2 or data.shape[1] != CIFAR_ROW:
            raise UserError(f"{path}: rows of {data.shape[-1] if data.ndim else 0} values; CIFAR rows hold "
                            f"{CIFAR_ROW} (3 x 32 x 32)")
        if len(batch_labels) != len(data):
            raise UserError(f"{path}: {len(data)} rows but {len(batch_labels)} labels; the batch is inconsistent")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # rows are CHW-flattened
        labels.append(batch_labels)
    meta_path = next((p for p in (root / "batches.meta", root / "meta") if p.exists()), None)
    labels_all = np.concatenate(labels)
    names = [str(c) for c in range(int(labels_all.max()) + 1)]
    if meta_path is not None:
        meta = _load_cifar_pickle(meta_path)
        raw_names = meta.get(b"label_names") or meta.get(b"fine_label_names")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw_names] if raw_names else names
    return RawImages(np.concatenate(images), labels_all, names, f"CIFAR batches in {root}")


def _read_idx(path: Path, magic: int, kind: str) -> np.ndarray:
    """An IDX array (uint8 data) whose header is `magic`; its dimensions must account for every byte."""
    import zlib

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise UserError(f"{path}: truncated or corrupt gzip ({type(err).__name__}); download it again") from None
    except OSError as err:
        raise UserError(f"{path}: unreadable IDX file ({err})") from None
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if len(raw) < 8 or found != magic:
        raise UserError(f"{path}: not an IDX {kind} file (magic {found}, expected {magic}); check which file is which")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path}: IDX header cut short ({len(raw)} of {header} bytes)")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    want, have = int(np.prod(dims)), len(raw) - header
    if have < want:
        raise UserError(f"{path}: truncated IDX file ({have} of {want} values)")
    if have > want:
        raise UserError(f"{path}: {have - want} bytes after the {want} values its header declares; the file is "
                        "corrupt or not an IDX file")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).exists():
            return root / name
    raise UserError(f"{root}: missing {stem}[.gz] (MNIST/Fashion-MNIST IDX training files)")


def load_mnist_idx(cfg) -> RawImages:
    """MNIST / Fashion-MNIST IDX training files, raw or .gz."""
    root = _require_path(cfg)
    images = _read_idx(_find(root, "train-images-idx3-ubyte"), 2051, "image")
    labels = _read_idx(_find(root, "train-labels-idx1-ubyte"), 2049, "label").astype(np.int64)
    if len(images) != len(labels):
        raise UserError(f"{root}: {len(images)} images but {len(labels)} labels")
    return RawImages(images[..., None], labels, [str(c) for c in range(int(labels.max()) + 1)], f"IDX files in {root}")
