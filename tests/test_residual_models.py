"""The residual family (model.family: resnet): shapes, conditioning and the plumbing that rebuilds it."""
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from components.models import ModelConfig, ResidualDiscriminator, ResidualGenerator, build_generator, build_models
from components.models.residual import ConditionalBatchNorm2d, DownBlock, down_stack, levels, widths


def test_levels_and_widths_known_answers():
    assert levels(32) == 3 and levels(64) == 4 and levels(8) == 1
    assert widths(16, 3) == [16, 32, 64, 64] and widths(16, 4) == [16, 32, 64, 64, 64]
    for bad in (4, 48, 100):
        with pytest.raises(ValueError, match="4 \\* 2\\^k"):
            levels(bad)


@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_residual_generator_keeps_the_seed_familys_interface(resolution, channels):
    G = ResidualGenerator(channels, resolution, num_classes=10, base=4, z_dim=16)
    x, y = torch.rand(3, channels, resolution, resolution) * 2 - 1, torch.tensor([0, 4, 9])
    assert G.reconstruct(x, y).shape == x.shape
    out = G.generate(torch.randn(5, 16), torch.arange(5))
    assert out.shape == (5, channels, resolution, resolution) and out.abs().max() <= 1
    rec, fake, mu, logvar = G(x, y, torch.randn(2, 16), torch.tensor([1, 2]))
    assert rec.shape == x.shape and fake.shape == (2, channels, resolution, resolution)
    assert mu.shape == logvar.shape == (3, 16)
    # Every conditional batch norm contributes a gain and a bias table: 2 per norm, 2 norms per up block.
    assert [tuple(t.shape) for t in G.class_tables()][:4] == [(10, 16)] * 2 + [(10, 16)] * 2
    assert len(G.class_tables()) == 4 * levels(resolution)


@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("norm", ["spectral", "none"])
def test_residual_discriminator_gives_one_logit_per_image(resolution, norm):
    D = ResidualDiscriminator(3, resolution, num_classes=10, base=4, norm=norm)
    assert D(torch.randn(4, 3, resolution, resolution), torch.tensor([0, 1, 2, 3])).shape == (4,)
    aux = ResidualDiscriminator(3, resolution, 10, base=4, norm=norm, conditioning="auxiliary")
    logits, classes = aux(torch.randn(4, 3, resolution, resolution), torch.zeros(4, dtype=torch.long),
                          with_classes=True)
    assert logits.shape == (4,) and classes.shape == (4, 10)


def test_down_stack_halves_each_level_to_4x4():
    stack = down_stack(3, 8, 4)
    h = torch.randn(2, 3, 64, 64)
    sizes = []
    for block in stack:
        h = block(h)
        sizes.append(tuple(h.shape[1:]))
    assert sizes == [(8, 32, 32), (16, 16, 16), (32, 8, 8), (32, 4, 4)]
    assert isinstance(stack[0], DownBlock) and stack[0].first and not stack[1].first


def test_conditional_batch_norm_is_plain_batch_norm_until_a_class_row_moves():
    cbn = ConditionalBatchNorm2d(4, num_classes=3)
    x, y = torch.randn(6, 4, 5, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    plain = F.batch_norm(x, None, None, training=True)
    torch.testing.assert_close(cbn(x, y), plain)
    with torch.no_grad():
        cbn.gain.weight[2] = 1.0  # class 2: gain 1 + 1 = 2
        cbn.bias.weight[2] = 0.5
    out = cbn(x, y)
    torch.testing.assert_close(out[y == 2], 2 * plain[y == 2] + 0.5)
    torch.testing.assert_close(out[y != 2], plain[y != 2])


def test_projection_term_is_the_embedding_difference_dotted_with_the_pooled_features():
    torch.manual_seed(0)
    D = ResidualDiscriminator(1, 32, 10, base=4, norm="none")
    x = torch.randn(1, 1, 32, 32)
    pooled = F.relu(D.features(x)).sum(dim=(2, 3))
    gap = D(x, torch.tensor([3])) - D(x, torch.tensor([7]))
    torch.testing.assert_close(gap, ((D.projection.weight[3] - D.projection.weight[7]) * pooled).sum(1))


def test_family_selects_the_networks_and_refuses_batch_norm_in_a_residual_d():
    G, D = build_models(ModelConfig(family="resnet", g_base_channels=4, d_base_channels=4, z_dim=8), 1, 32, 10)
    assert isinstance(G, ResidualGenerator) and isinstance(D, ResidualDiscriminator)
    with pytest.raises(ValidationError, match="d_norm: spectral or none"):
        ModelConfig(family="resnet", d_norm="batch")


def test_registry_arch_rebuilds_a_residual_generator_with_identical_samples():
    from components.registry import generator_arch

    G = ResidualGenerator(3, 32, 10, base=4, z_dim=8).eval()
    arch = generator_arch(G, 4, "batch")
    rebuilt = build_generator(**arch)
    rebuilt.load_state_dict(G.state_dict())
    z, y = torch.randn(4, 8), torch.arange(4)
    torch.testing.assert_close(rebuilt.eval().generate(z, y), G.generate(z, y))
    assert type(build_generator(**{**arch, "family": "seed"})).__name__ == "Generator"
