"""Shapes of the source document's networks, as printed and as fixed."""
import pytest
import torch

from components.models import Discriminator, Generator
from components.models.source_document import SourceDocumentGenerator


def test_source_document_generator_shrinks_64_to_56():
    # The article's encoder has no padding: 64 -> 31 -> 14 -> 6, and the decoder returns 6 -> 14 -> 28 -> 56.
    out = SourceDocumentGenerator(in_channels=3)(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 3, 56, 56)


@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_fixed_generator_keeps_size(resolution, channels):
    G = Generator(channels, resolution, num_classes=10, base=8, z_dim=16)
    x = torch.randn(3, channels, resolution, resolution)
    y = torch.tensor([0, 4, 9])
    assert G.reconstruct(x, y).shape == x.shape
    assert G.generate(torch.randn(5, 16), torch.arange(5)).shape == (5, channels, resolution, resolution)
    rec, fake, mu, logvar = G(x, y, torch.randn(2, 16), torch.tensor([1, 2]))
    assert rec.shape == x.shape and fake.shape == (2, channels, resolution, resolution)
    assert mu.shape == logvar.shape == (3, 16)


@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("norm", ["batch", "spectral", "none"])
def test_discriminator_gives_one_logit_per_image(resolution, norm):
    D = Discriminator(1, resolution, num_classes=10, base=8, norm=norm)
    logits = D(torch.randn(4, 1, resolution, resolution), torch.tensor([0, 1, 2, 3]))
    assert logits.shape == (4,)


def test_no_sigmoid_in_networks():
    D = Discriminator(1, 32, num_classes=10, base=8, norm="none")
    assert not any(isinstance(m, torch.nn.Sigmoid) for m in D.modules())
    logits = D(torch.randn(64, 1, 32, 32) * 50, torch.zeros(64, dtype=torch.long))
    assert (logits.abs() > 1).any()  # unbounded logits, not probabilities
