"""Every bad input is refused through the CLI: exit status 2, one line on stderr naming the file, row or class
and the fix, no traceback, and no manifest left behind. Inputs that are unusual but meaningful (alpha, CMYK,
16-bit, float, GIF/TIFF/WebP, READMEs in class folders) are converted or ignored deliberately, and tested so."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from components.data.config import DataConfig
from components.data.prepare import prepare_dataset
from pipeline.cli import main
from tests.conftest import REPO


def png(value: int = 100, size=(12, 12), mode="L", fmt="PNG", **save) -> bytes:
    buf = io.BytesIO()
    fill = value if mode in ("L", "I;16", "I", "F") else tuple([value] * len(mode))
    Image.new(mode, size, fill).save(buf, format=fmt, **save)
    return buf.getvalue()


def folder(root: Path, per_class=(6, 6, 6)) -> Path:
    for c, n in enumerate(per_class):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (d / f"{i}.png").write_bytes(png(20 * c + i))
    return root


def bomb_png() -> bytes:
    """A valid PNG header declaring 30000 x 30000 pixels: a decompression bomb by PIL's limit."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


def animated_gif() -> bytes:
    frames = [Image.new("L", (12, 12), v) for v in (10, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


# ---------------------------------------------------------------- image folders: (id, build, needle, skippable)
def _bad_file(name: str, payload: bytes | None = None):
    def build(tmp: Path) -> dict:
        root = folder(tmp / "imgs")
        (root / "class_1" / name).write_bytes(payload)
        return {"source": "image_folder", "path": str(root)}
    return build


def _fifo(tmp: Path) -> dict:
    root = folder(tmp / "imgs")
    os.mkfifo(root / "class_1" / "pipe.png")
    return {"source": "image_folder", "path": str(root)}


def _symlinked_class(tmp: Path) -> dict:
    outside = folder(tmp / "elsewhere", per_class=(6,))
    root = folder(tmp / "imgs")
    (root / "class_9").symlink_to(outside / "class_0", target_is_directory=True)
    return {"source": "image_folder", "path": str(root)}


def _symlinked_file(tmp: Path) -> dict:
    (tmp / "secret.png").write_bytes(png(5))
    root = folder(tmp / "imgs")
    (root / "class_1" / "link.png").symlink_to(tmp / "secret.png")
    return {"source": "image_folder", "path": str(root)}


def _one_class(tmp: Path) -> dict:
    return {"source": "image_folder", "path": str(folder(tmp / "imgs", per_class=(9,)))}


def _non_utf8_class(tmp: Path) -> dict:
    root = folder(tmp / "imgs")
    os.rename(os.fsencode(root / "class_2"), os.fsencode(root) + b"/caf\xe9")
    return {"source": "image_folder", "path": str(root)}


def _no_class_folders(tmp: Path) -> dict:
    (tmp / "imgs").mkdir()
    (tmp / "imgs" / "a.png").write_bytes(png())
    return {"source": "image_folder", "path": str(tmp / "imgs")}


def _empty_class(tmp: Path) -> dict:
    root = folder(tmp / "imgs")
    (root / "class_9").mkdir()
    return {"source": "image_folder", "path": str(root)}


def _only_text_class(tmp: Path) -> dict:
    root = folder(tmp / "imgs")
    (root / "class_9").mkdir()
    (root / "class_9" / "README.md").write_text("notes")
    return {"source": "image_folder", "path": str(root)}


def _too_small_class(tmp: Path) -> dict:
    return {"source": "image_folder", "path": str(folder(tmp / "imgs", per_class=(6, 6, 2)))}


def _folder_is_a_file(tmp: Path) -> dict:
    (tmp / "imgs.png").write_bytes(png())
    return {"source": "image_folder", "path": str(tmp / "imgs.png")}


def _missing(source: str):
    return lambda tmp: {"source": source, "path": str(tmp / "nowhere")}


def _float_out_of_range(tmp: Path) -> dict:
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 12), 4000.0, np.float32)).save(buf, format="TIFF")  # mode F
    return _bad_file("float.tif", buf.getvalue())(tmp)


FOLDER_CASES = [
    ("truncated-png", _bad_file("broken.png", png()[:40]), "broken.png: not a readable image", True),
    ("zero-byte", _bad_file("empty.png", b""), "empty.png: zero-byte file", True),
    ("text-named-png", _bad_file("notes.png", b"just text"), "notes.png: not a readable image", True),
    ("truncated-jpeg", _bad_file("cut.jpg", png(fmt="JPEG")[:60]), "cut.jpg: not a readable image", True),
    ("bogus-bmp", _bad_file("bad.bmp", b"BM" + b"\0" * 40), "bad.bmp: not a readable image", True),
    ("decompression-bomb", _bad_file("bomb.png", bomb_png()), "bomb.png: too large to decode", True),
    ("animated-gif", _bad_file("anim.gif", animated_gif()), "anim.gif: animated image (2 frames)", True),
    ("float-out-of-range", _float_out_of_range, "float.tif: float pixels in [4000, 4000]", True),
    ("fifo", _fifo, "pipe.png: not a regular file", True),
    ("symlinked-class-outside", _symlinked_class, "class_9 is a link to", False),
    ("symlinked-file-outside", _symlinked_file, "link.png is a link to", False),
    ("single-class", _one_class, "only one class", False),
    ("non-utf8-class-name", _non_utf8_class, "not valid UTF-8", False),
    ("no-class-folders", _no_class_folders, "has no class subfolders", False),
    ("empty-class", _empty_class, "class folder 'class_9'", False),
    ("class-of-only-text", _only_text_class, "class folder 'class_9'", False),
    ("class-too-small", _too_small_class, "class 'class_2' has 2 image", False),
    ("folder-is-a-file", _folder_is_a_file, "is a file; image_folder needs a folder", False),
    ("folder-missing", _missing("image_folder"), "data.path not found", False),
]


# ---------------------------------------------------------------- Parquet
def _parquet(columns: dict, name="d.parquet", meta=None, schema=None):
    def build(tmp: Path) -> dict:
        (tmp / "pq").mkdir(exist_ok=True)
        table = pa.table(columns, schema=schema)
        if meta:
            table = table.replace_schema_metadata(meta)
        pq.write_table(table, tmp / "pq" / name)
        return {"source": "parquet", "path": str(tmp / "pq"), "image_column": "img", "label_column": "y"}
    return build


def _raw_parquet(payload: bytes):
    def build(tmp: Path) -> dict:
        (tmp / "pq").mkdir()
        (tmp / "pq" / "d.parquet").write_bytes(payload)
        return {"source": "parquet", "path": str(tmp / "pq"), "image_column": "img", "label_column": "y"}
    return build


def _mixed_parquet(tmp: Path) -> dict:
    _parquet({"img": [png(i) for i in range(6)], "y": [0, 1] * 3}, "a.parquet")(tmp)
    rows = [list(np.full(64, i, np.uint8)) for i in range(6)]
    return _parquet({"img": rows, "y": [0, 1] * 3}, "b.parquet", meta={"image_shape_hwc": "[8, 8, 1]"})(tmp)


def _no_parquet_files(tmp: Path) -> dict:
    (tmp / "pq").mkdir()
    (tmp / "pq" / "notes.txt").write_text("x")
    return {"source": "parquet", "path": str(tmp / "pq"), "image_column": "img", "label_column": "y"}


GOOD_PNGS = [png(10 * i) for i in range(12)]
LABELS = [0, 1, 2] * 4
ARRAYS = [list(np.full(64, i, np.uint8)) for i in range(12)]
PARQUET_CASES = [
    ("parquet-zero-byte", _raw_parquet(b""), "d.parquet: not a readable Parquet file", False),
    ("parquet-corrupt", _raw_parquet(b"PAR1" + os.urandom(64)), "d.parquet: not a readable Parquet file", False),
    ("parquet-missing-image-column", _parquet({"other": GOOD_PNGS, "y": LABELS}), "missing column(s) ['img']", False),
    ("parquet-missing-label-column", _parquet({"img": GOOD_PNGS, "z": LABELS}), "missing column(s) ['y']", False),
    ("parquet-string-labels", _parquet({"img": GOOD_PNGS, "y": ["a", "b", "c"] * 4}), "has type string", False),
    ("parquet-float-labels", _parquet({"img": GOOD_PNGS, "y": [0.0, 1.0, 2.0] * 4}), "has type double", False),
    ("parquet-null-image", _parquet({"img": GOOD_PNGS[:5] + [None] + GOOD_PNGS[6:], "y": LABELS}),
     "row 5: no image (null)", True),
    ("parquet-null-label-bytes", _parquet({"img": GOOD_PNGS, "y": LABELS[:3] + [None] + LABELS[4:]}),
     "row 3: no label (null)", False),
    ("parquet-null-label-arrays", _parquet({"img": ARRAYS, "y": LABELS[:3] + [None] + LABELS[4:]},
                                           meta={"image_shape_hwc": "[8, 8, 1]"}), "row 3: no label (null)", False),
    ("parquet-zero-rows", _parquet({"img": pa.array([], pa.binary()), "y": pa.array([], pa.int64())}),
     "d.parquet: no rows", False),
    ("parquet-arrays-without-shape", _parquet({"img": ARRAYS, "y": LABELS}), "of varying or unknown shape", False),
    ("parquet-wrong-shape", _parquet({"img": ARRAYS[:4] + [ARRAYS[4][:10]] + ARRAYS[5:], "y": LABELS},
                                     meta={"image_shape_hwc": "[8, 8, 1]"}), "row 4: image has 10 values", False),
    ("parquet-mixed-kinds", _mixed_parquet, "holds arrays but", False),
    ("parquet-undecodable-bytes", _parquet({"img": GOOD_PNGS[:7] + [b"garbage"] + GOOD_PNGS[8:], "y": LABELS}),
     "row 7: not a readable image", True),
    ("parquet-negative-label", _parquet({"img": GOOD_PNGS, "y": [0, 1, -1] * 4}), "label -1 at row 2", False),
    ("parquet-no-files", _no_parquet_files, "no .parquet files in", False),
    ("parquet-missing", _missing("parquet"), "data.path not found", False),
]


# ---------------------------------------------------------------- CIFAR
def _cifar(batch, meta=None, raw: bytes | None = None):
    def build(tmp: Path) -> dict:
        root = tmp / "cifar"
        root.mkdir()
        if raw is not None:
            (root / "data_batch_1").write_bytes(raw)
        else:
            with open(root / "data_batch_1", "wb") as f:
                pickle.dump(batch, f, protocol=2)
        return {"source": "cifar", "path": str(root), "channels": 3}
    return build


def _cifar_batch(n=30, row=3072, labels=None):
    rng = np.random.default_rng(0)
    return {b"data": rng.integers(0, 255, (n, row), dtype=np.uint8),
            b"labels": list(np.arange(n) % 3) if labels is None else labels}


# A dict whose one value claims 2 GiB of bytes and holds two: refused without allocating what it claims.
HUGE_BINBYTES = b"\x80\x02}q\x00(C\x04dataB" + struct.pack("<I", 2**31 - 1) + b"xx"
CIFAR_CASES = [
    ("cifar-short-labels", _cifar(_cifar_batch(labels=list(range(3)) * 9)), "30 rows but 27 labels", False),
    ("cifar-wrong-row-length", _cifar(_cifar_batch(row=3000)), "rows of 3000 values; CIFAR rows hold 3072", False),
    ("cifar-not-a-dict", _cifar([1, 2, 3]), "not a CIFAR batch (a list", False),
    ("cifar-huge-binbytes", _cifar(None, raw=HUGE_BINBYTES), "truncated or corrupt CIFAR batch", False),
    ("cifar-truncated", _cifar(None, raw=pickle.dumps(_cifar_batch(), protocol=2)[:500]),
     "truncated or corrupt CIFAR batch", False),
    ("cifar-missing-labels", _cifar({b"data": _cifar_batch()[b"data"]}), "not a CIFAR batch (needs", False),
    ("cifar-bad-label-values", _cifar(_cifar_batch(labels=["x"] * 30)), "labels must be integers", False),
    ("cifar-missing", _missing("cifar"), "data.path not found", False),
]


# ---------------------------------------------------------------- MNIST IDX
def _idx(images: bytes | None = None, labels: bytes | None = None, gz=False, n=30, n_labels=None):
    def build(tmp: Path) -> dict:
        root = tmp / "mnist"
        root.mkdir()
        pix = np.random.default_rng(0).integers(0, 255, (n, 28, 28), dtype=np.uint8)
        img = images if images is not None else (
            (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28)) + pix.tobytes())
        m = n if n_labels is None else n_labels
        lab = labels if labels is not None else (
            (2049).to_bytes(4, "big") + m.to_bytes(4, "big") + (np.arange(m) % 3).astype(np.uint8).tobytes())
        ext = ".gz" if gz else ""
        for name, payload in (("train-images-idx3-ubyte", img), ("train-labels-idx1-ubyte", lab)):
            (root / (name + ext)).write_bytes(gzip.compress(payload) if gz else payload)
        return {"source": "mnist_idx", "path": str(root)}
    return build


def _truncated_gz(tmp: Path) -> dict:
    spec = _idx(gz=True)(tmp)
    path = tmp / "mnist" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    return spec


def _not_gzip(tmp: Path) -> dict:
    spec = _idx(gz=True)(tmp)
    (tmp / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    return spec


def _idx_header(magic: int, dims: tuple[int, ...]) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)


IDX_CASES = [
    ("idx-swapped-magic", _idx(images=_idx_header(2049, (30,)) + bytes(30)), "not an IDX image file", False),
    ("idx-short-header", _idx(images=b"\x00\x00\x08"), "not an IDX image file", False),
    ("idx-count-mismatch", _idx(n_labels=25), "30 images but 25 labels", False),
    ("idx-trailing-bytes", _idx(labels=_idx_header(2049, (30,)) + bytes(30) + b"extra"),
     "5 bytes after the 30 values", False),
    ("idx-truncated-body", _idx(images=_idx_header(2051, (30, 28, 28)) + bytes(100)), "truncated IDX file", False),
    ("idx-truncated-gz", _truncated_gz, "truncated or corrupt gzip", False),
    ("idx-not-gzip", _not_gzip, "truncated or corrupt gzip", False),
    ("idx-missing-labels", lambda tmp: (_idx()(tmp), (tmp / "mnist" / "train-labels-idx1-ubyte").unlink())[0],
     "missing train-labels-idx1-ubyte", False),
    ("idx-missing", _missing("mnist_idx"), "data.path not found", False),
]

CASES = FOLDER_CASES + PARQUET_CASES + CIFAR_CASES + IDX_CASES


# ---------------------------------------------------------------- checkpoints handed to `evaluate --model`
class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _checkpoint_file(payload) -> callable:
    def build(tmp: Path) -> Path:
        path = tmp / "model.pt"
        if isinstance(payload, bytes):
            path.write_bytes(payload)
        else:
            import torch

            torch.save(payload, path)
        return path
    return build


CHECKPOINT_CASES = [
    ("checkpoint-zero-byte", _checkpoint_file(b""), "refusing checkpoint"),
    ("checkpoint-random-bytes", _checkpoint_file(os.urandom(256)), "refusing checkpoint"),
    ("checkpoint-with-code", _checkpoint_file({"G": _Evil()}), "not a plain-tensor checkpoint"),
    ("checkpoint-not-a-checkpoint", _checkpoint_file({"weights": [1, 2, 3]}), "is not a training checkpoint"),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """One tracking store for every case: each is refused in prepare, and a new SQLite store costs a
    schema migration."""
    return tmp_path_factory.mktemp("store")


def _cli(tmp: Path, spec: dict, store: Path) -> list[str]:
    sets = [f"data.{k}={v}" for k, v in spec.items()] + [
        f"work_dir={tmp / 'work'}", f"tracking.uri=sqlite:///{store / 'mlflow.db'}",
        f"tracking.artifact_root={store / 'art'}", "data.val_fraction=0.2", "data.test_fraction=0.2",
        "data.imbalance_ratio=1"]
    return ["run", "--config", str(REPO / "configs" / "smoke.yaml"), *[x for s in sets for x in ("--set", s)]]


def test_there_are_at_least_fifty_bad_inputs():
    assert len(CASES) >= 50 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name, build, needle, skippable", CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_is_refused_in_one_line(tmp_path, capsys, store, name, build, needle, skippable):
    spec = build(tmp_path)
    code = main(_cli(tmp_path, spec, store))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and needle in err[0], err
    assert "Traceback" not in err[0]
    assert not list((tmp_path / "work").rglob("manifest.json"))  # no half-written output
    if skippable:  # --skip-corrupt drops the file and lists it
        manifest = prepare_dataset(DataConfig(**spec, val_fraction=0.2, test_fraction=0.2, skip_corrupt=True),
                                   tmp_path / "skipped")
        assert len(manifest["skipped_files"]) == 1 and needle.split(":")[0] in manifest["skipped_files"][0]


@pytest.mark.parametrize("name, build, needle", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_a_bad_checkpoint_is_refused_in_one_line(tmp_path, capsys, monkeypatch, name, build, needle):
    path = build(tmp_path)
    monkeypatch.chdir(tmp_path)
    code = main(["evaluate", "--model", str(path), "--out", str(tmp_path / "ev"),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0] and "model.pt" in err[0], err
    assert not (tmp_path / "ev").exists() and not (tmp_path / "pwned").exists()


def test_the_suite_tries_at_least_fifty_bad_inputs():
    assert len(CASES) + len(CHECKPOINT_CASES) >= 50


# ---------------------------------------------------------------- deliberate conversions, not refusals
def _one_image_folder(tmp: Path, image: Image.Image, name: str = "odd.png", **save) -> Path:
    root = folder(tmp / "imgs")
    image.save(root / "class_0" / name, **save)
    return root


def _pixels_of(tmp: Path, root: Path, name: str, channels: int = 1) -> np.ndarray:
    """The 32x32 uint8 pixels prepare makes of class_0/`name`."""
    from components.data.sources import decode_image

    cfg = DataConfig(source="image_folder", path=str(root), channels=channels)
    return decode_image(root / "class_0" / name, cfg, name)[0]


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = (np.linspace(0, 65535, 12 * 12).reshape(12, 12)).astype(np.uint16)
    root = _one_image_folder(tmp_path, Image.fromarray(ramp))  # uint16: mode I;16
    px = _pixels_of(tmp_path, root, "odd.png")
    assert 100 < px.mean() < 155 and px.min() < 30 and px.max() > 225  # a full ramp, not a wall of 255


def test_float_images_in_unit_range_are_scaled(tmp_path):
    root = _one_image_folder(tmp_path, Image.fromarray(np.full((12, 12), 0.5, np.float32)), "half.tif")  # mode F
    assert abs(float(_pixels_of(tmp_path, root, "half.tif").mean()) - 127.5) < 2


def test_alpha_is_composited_on_black_and_cmyk_converted(tmp_path):
    rgba = Image.new("RGBA", (12, 12), (255, 255, 255, 0))  # fully transparent white: black after compositing
    root = _one_image_folder(tmp_path, rgba, "clear.png")
    assert _pixels_of(tmp_path, root, "clear.png", channels=3).max() == 0
    cmyk = Image.new("CMYK", (12, 12), (0, 0, 0, 0))  # no ink: white
    root2 = _one_image_folder(tmp_path / "2", cmyk, "paper.jpg")
    assert _pixels_of(tmp_path / "2", root2, "paper.jpg", channels=3).min() > 240


def test_readmes_and_thumbnails_in_class_folders_are_ignored_and_listed(tmp_path):
    root = folder(tmp_path / "imgs")
    (root / "class_0" / "README.md").write_text("about these images")
    (root / "class_1" / "Thumbs.db").write_bytes(os.urandom(64))
    Image.new("L", (12, 12), 9).save(root / "class_2" / "extra.webp")  # a real image format: used
    manifest = prepare_dataset(DataConfig(source="image_folder", path=str(root), val_fraction=0.2,
                                          test_fraction=0.2, imbalance_ratio=1), tmp_path / "out")
    assert manifest["num_images"] == 19
    assert sorted(Path(p).name for p in manifest["ignored_files"]) == ["README.md", "Thumbs.db"]


def test_class_names_that_mlflow_keys_cannot_hold_still_prepare(tmp_path):
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline
    from tests.conftest import smoke_overrides

    root = tmp_path / "imgs"
    for c, name in enumerate(["cats (big)", "R&D", "o'clock", "a,b"]):
        d = root / name
        d.mkdir(parents=True)
        for i in range(5):
            (d / f"{i}.png").write_bytes(png(30 * c + i))
    cfg = load_config(REPO / "configs" / "smoke.yaml", smoke_overrides(tmp_path) + [
        "data.source=image_folder", f"data.path={root}", "data.imbalance_ratio=1", "data.val_fraction=0.2",
        "data.test_fraction=0.2"])
    summary = run_pipeline(cfg, until="prepare")
    manifest = Path(summary["stage_dirs"]["prepare"]) / "data" / "manifest.json"
    import json

    assert json.loads(manifest.read_text())["class_names"] == ["R&D", "a,b", "cats (big)", "o'clock"]
