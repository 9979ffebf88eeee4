"""GAN regularisers as small pure functions; GANLoss decides where each one enters the D or G loss.

Weight decay lives in the optimiser (AdamW), spectral norm in the discriminator, EMA and TTUR in the
training state; everything that changes a loss value is here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("translation", "cutout", "color")


def input_gradient_sq_norm(logits_b: torch.Tensor, inputs_bchw: torch.Tensor) -> torch.Tensor:
    """Per-sample ||d logit / d input||^2, differentiable (create_graph) so the penalty trains D."""
    (grad,) = torch.autograd.grad(logits_b.sum(), inputs_bchw, create_graph=True)
    return grad.pow(2).flatten(1).sum(dim=1)


def r1_penalty(real_logits_b: torch.Tensor, x_real_bchw: torch.Tensor) -> torch.Tensor:
    """Per-sample R1 (Mescheder et al. 2018) without the gamma/2 factor: ||grad_x D(x)||^2 on real data."""
    return input_gradient_sq_norm(real_logits_b, x_real_bchw)


def gradient_penalty(interp_logits_b: torch.Tensor, x_interp_bchw: torch.Tensor) -> torch.Tensor:
    """Per-sample WGAN-GP penalty (Gulrajani et al. 2017): (||grad D(x_hat)|| - 1)^2."""
    norm = input_gradient_sq_norm(interp_logits_b, x_interp_bchw).add(1e-12).sqrt()
    return (norm - 1.0).pow(2)


def interpolate(real: torch.Tensor, fake: torch.Tensor, alpha_b: torch.Tensor) -> torch.Tensor:
    """x_hat = alpha * real + (1 - alpha) * fake, one alpha per sample; a leaf that requires grad."""
    a = alpha_b.view(-1, *([1] * (real.dim() - 1)))
    return (a * real + (1 - a) * fake.detach()).detach().requires_grad_(True)


def lecam(real_logits: torch.Tensor, fake_logits: torch.Tensor, anchor_real: float, anchor_fake: float) -> torch.Tensor:
    """LeCam regulariser (Tseng et al. 2021): keeps D's real and fake logits near the other side's EMA."""
    return F.relu(real_logits - anchor_fake).pow(2).mean() + F.relu(anchor_real - fake_logits).pow(2).mean()


def instance_noise_std(initial_std: float, decay_steps: int, step: int) -> float:
    """Instance-noise schedule: linear decay from initial_std at step 0 to 0 at decay_steps."""
    return initial_std * max(0.0, 1.0 - step / max(decay_steps, 1))


def add_instance_noise(x: torch.Tensor, std: float) -> torch.Tensor:
    """x + N(0, std^2) (Sønderby et al. 2016); identity when std is 0."""
    return x if std <= 0 else x + std * torch.randn_like(x)


# Section: DiffAugment (Zhao et al. 2020), the same random transform family on real and fake inputs of D.
# Each transform has a deterministic core (tested on known answers) and a random wrapper.

def color(x: torch.Tensor, brightness_b: torch.Tensor, saturation_b: torch.Tensor, contrast_b: torch.Tensor) -> torch.Tensor:
    """Add brightness, scale the distance from the channel mean (saturation) and from the image mean (contrast)."""
    v = lambda t: t.view(-1, 1, 1, 1)  # noqa: E731
    x = x + v(brightness_b)
    mean_c = x.mean(dim=1, keepdim=True)
    x = (x - mean_c) * v(saturation_b) + mean_c
    mean_all = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean_all) * v(contrast_b) + mean_all


def translate(x: torch.Tensor, shift_b2: torch.Tensor) -> torch.Tensor:
    """Shift each image by (rows, cols), filling with zeros; differentiable (a gather)."""
    b, c, h, w = x.shape
    pad = max(int(shift_b2.abs().max()), 1)
    padded = F.pad(x, [pad, pad, pad, pad])
    rows = (torch.arange(h, device=x.device).view(1, h, 1) - shift_b2[:, 0].view(b, 1, 1) + pad)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) - shift_b2[:, 1].view(b, 1, 1) + pad)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows.expand(b, h, w), cols.expand(b, h, w)].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, centre_b2: torch.Tensor, size: int) -> torch.Tensor:
    """Zero a size x size square centred at each image's (row, col), clipped at the borders."""
    b, _, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    top = (centre_b2[:, 0] - size // 2).view(b, 1, 1)
    left = (centre_b2[:, 1] - size // 2).view(b, 1, 1)
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def diff_augment(x: torch.Tensor, policy: list[str] | tuple[str, ...], p: torch.Tensor | float | None = None,
                 translation_ratio: float = 0.125, cutout_ratio: float = 0.5) -> torch.Tensor:
    """Apply the policy's random transforms, drawn per sample from the global (per-rank seeded) RNG; with
    `p`, each sample keeps its transforms with probability p and is left as it was otherwise (ADA)."""
    augmented = _transform(x, policy, translation_ratio, cutout_ratio)
    if p is None:
        return augmented
    keep = torch.rand(len(x), device=x.device) < p
    return torch.where(keep.view(-1, 1, 1, 1), augmented, x)


def ada_adjust(p: torch.Tensor, mean_sign: torch.Tensor, target: float, step: float) -> torch.Tensor:
    """StyleGAN2-ADA's controller: p moves up by `step` when D is overconfident on real data (the mean of
    sign D(real) above target), down otherwise, within [0, 1]. Tensors in, tensor out: no host sync."""
    return (p + torch.sign(mean_sign - target) * step).clamp(0.0, 1.0)


def group_shape(width: int) -> tuple[int, int]:
    """(groups, width // groups) as close to square as width allows: 64 -> (8, 8), 128 -> (8, 16)."""
    groups = max(d for d in range(1, int(width ** 0.5) + 1) if width % d == 0)
    return groups, width // groups


def group_spectral_penalty(tables: list[torch.Tensor], class_weights_k: torch.Tensor) -> torch.Tensor:
    """Group spectral regularisation (gSR, Rangwani et al. 2022): each class's row of each class-conditional
    table (conditional batch-norm gains and biases, or a label embedding) is folded into a group matrix,
    and its largest singular value is penalised, weighted by the class's weight so that tail classes, whose
    rows collapse to a few dominant directions first, weigh most. Sum over tables of the weighted class mean."""
    weights = class_weights_k / class_weights_k.sum()
    total = torch.zeros((), device=weights.device)
    for table in tables:
        k, width = table.shape
        sigma_k = torch.linalg.matrix_norm(table.float().reshape(k, *group_shape(width)), ord=2)
        total = total + (weights * sigma_k).sum()
    return total


def _transform(x: torch.Tensor, policy, translation_ratio: float, cutout_ratio: float) -> torch.Tensor:
    b, _, h, w = x.shape
    dev = x.device
    for name in policy:
        if name == "color":
            x = color(x, torch.rand(b, device=dev) - 0.5, torch.rand(b, device=dev) * 2,
                      torch.rand(b, device=dev) + 0.5)
        elif name == "translation":
            s = int(h * translation_ratio + 0.5)
            x = translate(x, torch.randint(-s, s + 1, (b, 2), device=dev))
        elif name == "cutout":
            size = int(h * cutout_ratio + 0.5)
            centre = torch.stack([torch.randint(0, h + (1 - size % 2), (b,), device=dev),
                                  torch.randint(0, w + (1 - size % 2), (b,), device=dev)], dim=1)
            x = cutout(x, centre, size)
        else:
            raise ValueError(f"unknown augmentation {name!r}; choose from {AUGMENTATIONS}")
    return x
