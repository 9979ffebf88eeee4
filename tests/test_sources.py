"""Every image source, and every kind of bad input: one clear error naming the culprit, no partial output."""
import gzip
import io
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from components.data.config import DataConfig
from components.data.prepare import prepare_dataset
from components.errors import UserError
from pipeline.cli import main
from tests.conftest import REPO


def png_bytes(value: int, size=(12, 12), mode="L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, value if mode == "L" else (value, 0, 255 - value)).save(buf, format="PNG")
    return buf.getvalue()


def make_folder(root, per_class=(6, 6, 6), mode="L", size=(12, 12)):
    for c, n in enumerate(per_class):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        for i in range(n):
            (d / f"{i}.png").write_bytes(png_bytes(20 * c + i, size, mode))
    return root


def cfg(**kw):
    return DataConfig(val_fraction=0.2, test_fraction=0.2, **kw)


def prepare(tmp_path, **kw):
    return prepare_dataset(cfg(**kw), tmp_path / "out")


def test_image_folder_rgb_to_gray_and_resized(tmp_path):
    root = make_folder(tmp_path / "imgs", mode="RGB", size=(20, 16))
    m = prepare(tmp_path, source="image_folder", path=str(root))
    assert m["class_names"] == ["class_0", "class_1", "class_2"] and m["num_images"] == 18
    assert m["image_shape_hwc"] == [32, 32, 1] and m["resized_images"] == 18


def test_image_folder_gray_to_rgb(tmp_path):
    root = make_folder(tmp_path / "imgs")
    assert prepare(tmp_path, source="image_folder", path=str(root), channels=3)["image_shape_hwc"] == [32, 32, 3]


@pytest.mark.parametrize("bad_name, payload, needle", [
    ("broken.png", png_bytes(3)[:40], "not a readable image"),
    ("empty.png", b"", "zero-byte file"),
    ("notes.png", b"just some text", "not a readable image"),
])
def test_unreadable_file_names_the_file(tmp_path, bad_name, payload, needle):
    root = make_folder(tmp_path / "imgs")
    (root / "class_1" / bad_name).write_bytes(payload)
    with pytest.raises(UserError, match=needle) as err:
        prepare(tmp_path, source="image_folder", path=str(root))
    assert bad_name in str(err.value) and "--skip-corrupt" in str(err.value)
    assert not (tmp_path / "out").exists()  # no partial output


def test_skip_corrupt_skips_and_records(tmp_path):
    root = make_folder(tmp_path / "imgs")
    (root / "class_1" / "broken.png").write_bytes(png_bytes(3)[:40])
    m = prepare(tmp_path, source="image_folder", path=str(root), skip_corrupt=True)
    assert m["num_images"] == 18 and m["skipped_files"][0].endswith("broken.png")


def test_empty_class_folder(tmp_path):
    root = make_folder(tmp_path / "imgs")
    (root / "class_9").mkdir()
    with pytest.raises(UserError, match="class folder 'class_9'.*empty"):
        prepare(tmp_path, source="image_folder", path=str(root))


def test_class_too_small_to_split(tmp_path):
    root = make_folder(tmp_path / "imgs", per_class=(6, 6, 2))
    with pytest.raises(UserError, match="class 'class_2' has 2 image"):
        prepare(tmp_path, source="image_folder", path=str(root))


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match="data.path not found"):
        prepare(tmp_path, source="image_folder", path=str(tmp_path / "nope"))


def write_parquet(path, images, labels, **schema_meta):
    table = pa.table({"img": images, "y": labels})
    if schema_meta:
        table = table.replace_schema_metadata(schema_meta)
    pq.write_table(table, path)
    return path


def test_parquet_encoded_bytes(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", [png_bytes(i) for i in range(12)], list(np.arange(12) % 2))
    m = prepare(tmp_path, source="parquet", path=str(path), image_column="img", label_column="y")
    assert m["num_images"] == 12 and m["num_classes"] == 2


def test_parquet_fixed_shape_arrays_and_mismatch(tmp_path):
    rows = [list(np.full(8 * 8, i, np.uint8)) for i in range(12)]
    path = write_parquet(tmp_path / "d.parquet", rows, list(np.arange(12) % 2))
    m = prepare(tmp_path, source="parquet", path=str(path), image_column="img", label_column="y",
                image_shape=[8, 8, 1])
    assert m["num_images"] == 12
    rows[5] = rows[5][:10]
    bad = write_parquet(tmp_path / "bad.parquet", rows, list(np.arange(12) % 2))
    with pytest.raises(UserError, match="row 5: image has 10 values"):
        prepare(tmp_path, source="parquet", path=str(bad), image_column="img", label_column="y", image_shape=[8, 8, 1])


def test_parquet_missing_columns_and_bad_label_dtype(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", [png_bytes(1)] * 4, ["a", "b", "a", "b"])
    with pytest.raises(UserError, match=r"missing column\(s\) \['image', 'label'\]"):
        prepare(tmp_path, source="parquet", path=str(path))
    with pytest.raises(UserError, match="label column 'y' has type string"):
        prepare(tmp_path, source="parquet", path=str(path), image_column="img", label_column="y")


def test_labels_out_of_range(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", [png_bytes(i) for i in range(12)], [0, 1, 5] * 4)
    with pytest.raises(UserError, match="label 5 at row 2 is out of range"):
        prepare(tmp_path, source="parquet", path=str(path), image_column="img", label_column="y", num_classes=2)


def write_cifar(root, n=30):
    root.mkdir()
    rng = np.random.default_rng(0)
    batch = {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), b"labels": list(np.arange(n) % 3)}
    with open(root / "data_batch_1", "wb") as f:
        pickle.dump(batch, f, protocol=2)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"cat", b"dog", b"frog"]}, f, protocol=2)
    return root


def test_cifar_batches(tmp_path):
    m = prepare(tmp_path, source="cifar", path=str(write_cifar(tmp_path / "cifar")), channels=3)
    assert m["class_names"] == ["cat", "dog", "frog"] and m["num_images"] == 30


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_cifar_pickle_with_disallowed_object_is_refused_unexecuted(tmp_path, monkeypatch):
    root = write_cifar(tmp_path / "cifar")
    with open(root / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f, protocol=2)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="refused to unpickle.*posix.system|refused to unpickle.*os.system"):
        prepare(tmp_path, source="cifar", path=str(root))
    assert not (tmp_path / "pwned").exists()


def write_idx(root, n=30, gz=True):
    root.mkdir()
    images = np.random.default_rng(0).integers(0, 255, (n, 28, 28), dtype=np.uint8)
    img = (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28)) + images.tobytes()
    lab = (2049).to_bytes(4, "big") + n.to_bytes(4, "big") + ((np.arange(n) % 3).astype(np.uint8)).tobytes()
    opener, ext = (gzip.open, ".gz") if gz else (open, "")
    with opener(root / f"train-images-idx3-ubyte{ext}", "wb") as f:
        f.write(img)
    with opener(root / f"train-labels-idx1-ubyte{ext}", "wb") as f:
        f.write(lab)
    return root


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx(tmp_path, gz):
    m = prepare(tmp_path, source="mnist_idx", path=str(write_idx(tmp_path / "mnist", gz=gz)))
    assert m["num_images"] == 30 and m["num_classes"] == 3


def test_truncated_idx(tmp_path):
    root = write_idx(tmp_path / "mnist", gz=False)
    path = root / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(UserError, match="truncated IDX"):
        prepare(tmp_path, source="mnist_idx", path=str(root))


def test_cli_bad_data_exits_2_with_one_line_and_no_output(tmp_path, capsys):
    root = make_folder(tmp_path / "imgs")
    (root / "class_0" / "empty.png").write_bytes(b"")
    code = main(["run", "--config", str(REPO / "configs" / "smoke.yaml"), "--set", "data.source=image_folder",
                 "--set", f"data.path={root}", "--set", f"work_dir={tmp_path / 'w'}",
                 "--set", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}",
                 "--set", f"tracking.artifact_root={tmp_path / 'art'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "empty.png: zero-byte file" in err[0]
    assert not list((tmp_path / "w" / "stages").rglob("manifest.json"))  # nothing half-written


def test_color_digits_are_rgb_glyphs_on_a_contrasting_background(tmp_path):
    manifest = prepare(tmp_path, source="color_digits", channels=3, resolution=32)
    assert manifest["num_classes"] == 10 and manifest["num_images"] == 1797
    from components.data.reader import load_split

    train = load_split(tmp_path / "out", "train")
    x = train.images_u8.numpy().astype(np.float32)  # (N, 3, 32, 32)
    assert x.shape[1:] == (3, 32, 32)
    # Colour, not grey copied three times: the channels differ.
    assert np.abs(x[:, 0] - x[:, 1]).mean() > 10
    # Each image has a bright glyph on a dark background.
    brightness = x.max(axis=1).reshape(len(x), -1)
    assert (np.percentile(brightness, 95, axis=1) - np.percentile(brightness, 5, axis=1) > 80).mean() > 0.95
    # Hues vary between images (not one palette per class).
    means = x.mean(axis=(2, 3))
    assert means.std(axis=0).min() > 5


def test_color_digits_are_reproducible_from_the_seed(tmp_path):
    a = prepare_dataset(cfg(source="color_digits", channels=3, seed=3), tmp_path / "a")
    b = prepare_dataset(cfg(source="color_digits", channels=3, seed=3), tmp_path / "b")
    c = prepare_dataset(cfg(source="color_digits", channels=3, seed=4), tmp_path / "c")
    assert a["digest"] == b["digest"] != c["digest"]


def test_color_digits_need_three_channels(capsys):
    code = main(["run", "--config", str(REPO / "configs" / "smoke.yaml"), "--dry-run",
                 "--set", "data.source=color_digits"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "data.channels" in err and "color_digits" in err
