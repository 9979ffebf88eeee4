"""Within-class collapse, on known answers: a "generator" that returns one fixed real image per class against
one that returns random real images of the class."""
import math

import numpy as np
import pytest
import torch

from components.data.config import DataConfig
from components.data.prepare import prepare_dataset
from components.data.reader import load_split
from components.evaluation import load_heldout
from components.metrics.autoencoder import cached_autoencoder, encode
from components.metrics.classifier import cached_classifier, predict
from components.metrics.diversity import collapse_term, diversity_ratios, mean_pairwise_distance
from components.metrics.quality import class_reweighted_frechet_distance, frechet_distance

PER_CLASS = 40


def test_mean_pairwise_distance_on_known_points():
    square = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert mean_pairwise_distance(square) == pytest.approx((4 * 1 + 2 * math.sqrt(2)) / 6)
    assert math.isnan(mean_pairwise_distance(square[:1]))
    assert mean_pairwise_distance(np.repeat(square[:1], 5, axis=0)) == 0.0


def test_diversity_ratio_and_collapse_term_per_class():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(60, 4))
    labels = np.repeat([0, 1, 2], 20)
    fake = np.concatenate([real[:20] * 0.5, np.repeat(real[20:21], 20, axis=0), real[40:60]])
    out = diversity_ratios(fake, labels, real, labels, 4)
    assert out["diversity_class_0"] == pytest.approx(0.5)
    assert out["diversity_class_1"] == pytest.approx(0.0, abs=1e-6) and out["diversity_class_2"] == pytest.approx(1.0)
    assert math.isnan(out["diversity_class_3"])  # no images of class 3: left out of the mean
    assert out["diversity_mean"] == pytest.approx(0.5)
    assert collapse_term(out) == pytest.approx((0.5 + 1.0 + 0.0) / 3, abs=1e-6)


@pytest.fixture(scope="module")
def spaces(tmp_path_factory):
    """Long-tailed digits, the evaluator classifier and the feature autoencoder, trained as evaluate does."""
    tmp = tmp_path_factory.mktemp("diversity")
    manifest = prepare_dataset(DataConfig(imbalance_ratio=10), tmp / "data")
    train, held = load_split(tmp / "data", "train"), load_heldout(tmp / "data", manifest)
    clf = cached_classifier(tmp / "cache", manifest["digest"], train, 10, 300, 0)
    ae = cached_autoencoder(tmp / "cache", manifest["digest"], train, 10, 300, 0)
    return train, held, clf, ae


def modes_per_class(held, k: int | None):
    """A known generator: per class, PER_CLASS samples cycling through k of its held-out images (k=1: the
    class collapsed to one image), or with k=None every held-out image of the class once (as varied as
    the data); with the requested labels."""
    gen = torch.Generator().manual_seed(0)
    x, y = held.images_float(), held.labels
    images, labels = [], []
    for c in range(10):
        xc = x[y == c][torch.randperm(int((y == c).sum()), generator=gen)]
        picked = xc if k is None else xc[:k][torch.arange(PER_CLASS) % min(k, len(xc))]
        images.append(picked)
        labels += [c] * len(picked)
    return torch.cat(images), torch.tensor(labels)


def scores(images, labels, train, clf, ae, rvr):
    """Diversity in both spaces, and class-matched FD ÷ real-vs-real in both spaces."""
    train_x, y_train = train.images_float(), train.labels.numpy()
    shares = np.bincount(y_train, minlength=10) / len(y_train)
    a_train = encode(ae, train_x).numpy().astype(np.float64)
    f_train = predict(clf, train_x)[0].numpy().astype(np.float64)
    a, f = encode(ae, images).numpy().astype(np.float64), predict(clf, images)[0].numpy().astype(np.float64)
    per_class = diversity_ratios(a, labels.numpy(), a_train, y_train, 10)
    return {"diversity_ae": per_class["diversity_mean"],
            "diversity_ae_worst_class": max(v for k, v in per_class.items() if k.startswith("diversity_class_")),
            "diversity_pixel": diversity_ratios(images.flatten(1).numpy(), labels.numpy(), train_x.flatten(1).numpy(),
                                                y_train, 10)["diversity_mean"],
            "fd_ae_ratio": class_reweighted_frechet_distance(a, labels.numpy(), shares, a_train)["fd"] / rvr["ae"],
            "fcd_ratio": class_reweighted_frechet_distance(f, labels.numpy(), shares, f_train)["fd"] / rvr["clf"]}


def test_collapse_within_classes_known_answers(spaces):
    """One image per class against every held-out image of the class. Measured when written (300-step
    evaluator and autoencoder): diversity 0.00 / 0.94 in autoencoder features and 0.00 / 0.96 in pixels;
    2 and 4 images per class give 0.48 and 0.72, so the ratio grades partial collapse too. The class-matched
    FD ÷ real-vs-real: 19.5x / 1.0x on autoencoder features, 17.8x / 1.05x on the classifier's. On these
    digits the classifier's FCD does see total collapse; it is one number over every class and every kind
    of error, while the diversity ratio says which class collapsed and how far (bench/collapse_check.py
    has the partial collapse that it missed)."""
    train, held, clf, ae = spaces
    rvr = {"ae": frechet_distance(encode(ae, held.images_float()).numpy().astype(np.float64),
                                  encode(ae, train.images_float()).numpy().astype(np.float64))["fd"],
           "clf": frechet_distance(predict(clf, held.images_float())[0].numpy().astype(np.float64),
                                   predict(clf, train.images_float())[0].numpy().astype(np.float64))["fd"]}
    got = {k: scores(*modes_per_class(held, k), train, clf, ae, rvr) for k in (1, 2, 4, None)}
    collapsed, diverse = got[1], got[None]
    assert collapsed["diversity_ae_worst_class"] < 0.01 and collapsed["diversity_pixel"] < 0.01, got
    assert diverse["diversity_ae"] > 0.85 and diverse["diversity_pixel"] > 0.85, got
    assert collapsed["diversity_ae"] < got[2]["diversity_ae"] < got[4]["diversity_ae"] < diverse["diversity_ae"]
    assert collapsed["fd_ae_ratio"] > 8 and diverse["fd_ae_ratio"] < 1.5, got
    assert collapsed["fcd_ratio"] > 8 and diverse["fcd_ratio"] < 1.5, got
