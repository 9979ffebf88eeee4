"""Within-class collapse, on known answers: a "generator" that returns one fixed real image per class against
one that returns random real images of the class."""
import math

import numpy as np
import pytest
import torch

from components.data.config import DataConfig
from components.data.prepare import prepare_dataset
from components.data.reader import load_split
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
    assert out["diversity_class_1"] == 0.0 and out["diversity_class_2"] == pytest.approx(1.0)
    assert math.isnan(out["diversity_class_3"])  # no images of class 3: left out of the mean
    assert out["diversity_mean"] == pytest.approx(0.5)
    assert collapse_term(out) == pytest.approx((0.5 + 1.0 + 0.0) / 3)


@pytest.fixture(scope="module")
def spaces(tmp_path_factory):
    """Long-tailed digits, the evaluator classifier and the feature autoencoder, trained as evaluate does."""
    tmp = tmp_path_factory.mktemp("diversity")
    manifest = prepare_dataset(DataConfig(imbalance_ratio=10), tmp / "data")
    train, held = load_split(tmp / "data", "train"), load_split(tmp / "data", "val")
    clf = cached_classifier(tmp / "cache", manifest["digest"], train, 10, 400, 0)
    ae = cached_autoencoder(tmp / "cache", manifest["digest"], train, 10, 600, 0)
    return train, held, clf, ae


def known_generators(held):
    """(collapsed, diverse): per class, PER_CLASS copies of its first held-out image, or PER_CLASS of its
    held-out images drawn at random; with the requested labels."""
    gen = torch.Generator().manual_seed(0)
    x, y = held.images_float(), held.labels
    labels = torch.arange(10).repeat_interleave(PER_CLASS)
    collapsed = torch.cat([x[y == c][:1].repeat(PER_CLASS, 1, 1, 1) for c in range(10)])
    diverse = torch.cat([x[y == c][torch.randint(int((y == c).sum()), (PER_CLASS,), generator=gen)]
                         for c in range(10)])
    return collapsed, diverse, labels


def test_collapse_within_classes_shows_in_the_autoencoder_space_not_in_classifier_features(spaces):
    train, held, clf, ae = spaces
    collapsed, diverse, labels = known_generators(held)
    train_x = train.images_float()
    shares = np.bincount(train.labels.numpy(), minlength=10) / len(train.labels)
    a_train = encode(ae, train_x).numpy().astype(np.float64)
    f_train = predict(clf, train_x)[0].numpy().astype(np.float64)
    scores = {}
    for name, images in (("collapsed", collapsed), ("diverse", diverse)):
        a, f = encode(ae, images).numpy().astype(np.float64), predict(clf, images)[0].numpy().astype(np.float64)
        scores[name] = {
            "diversity_ae": diversity_ratios(a, labels.numpy(), a_train, train.labels.numpy(), 10)["diversity_mean"],
            "diversity_pixel": diversity_ratios(images.flatten(1).numpy(), labels.numpy(),
                                                train_x.flatten(1).numpy(), train.labels.numpy(), 10)["diversity_mean"],
            "fd_ae": class_reweighted_frechet_distance(a, labels.numpy(), shares, a_train)["fd"],
            "fcd": class_reweighted_frechet_distance(f, labels.numpy(), shares, f_train)["fd"],
        }
    c, d = scores["collapsed"], scores["diverse"]
    # Diversity: nothing varies within a collapsed class; random real images vary as the data do.
    assert c["diversity_ae"] == 0.0 and c["diversity_pixel"] == 0.0
    assert 0.8 < d["diversity_ae"] < 1.2 and 0.8 < d["diversity_pixel"] < 1.2, d
    # The autoencoder's class-matched FD tells the two apart by a wide factor; the classifier's by much less,
    # because its features are trained to ignore how one class's images differ. (Measured when written: the
    # autoencoder's factor about 6x the classifier's.)
    ae_factor, clf_factor = c["fd_ae"] / d["fd_ae"], c["fcd"] / d["fcd"]
    assert ae_factor > 2 * clf_factor, scores
    real_vs_real = frechet_distance(encode(ae, held.images_float()).numpy().astype(np.float64), a_train)["fd"]
    assert d["fd_ae"] < 2 * real_vs_real < c["fd_ae"], (real_vs_real, scores)
