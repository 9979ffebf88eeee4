"""Robustness curves over epsilon: the discriminator, the encoder-decoder generator, and the evaluator.

All attacks are L-inf on images in [-1, 1]; each function returns one row per epsilon.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from components.attacks import fgsm, pgd


def _attack(name: str, loss_fn, x, eps: float, steps: int, seed: int):
    if eps == 0:
        return x.detach()
    if name == "fgsm":
        return fgsm(loss_fn, x, eps)
    return pgd(loss_fn, x, eps, steps=steps, generator=torch.Generator(device=x.device).manual_seed(seed))


def d_robustness(D, real, y_real, fake, y_fake, eps_list, attack: str = "pgd", steps: int = 10) -> list[dict]:
    """D's accuracy with real pushed towards 'fake' and fake pushed towards 'real', per epsilon."""
    rows = []
    for eps in eps_list:
        real_adv = _attack(attack, lambda x: F.binary_cross_entropy_with_logits(
            D(x, y_real), torch.ones(len(x), device=x.device)), real, eps, steps, 0)
        fake_adv = _attack(attack, lambda x: F.binary_cross_entropy_with_logits(
            D(x, y_fake), torch.zeros(len(x), device=x.device)), fake, eps, steps, 1)
        with torch.no_grad():
            acc_real = float((D(real_adv, y_real) > 0).float().mean())
            acc_fake = float((D(fake_adv, y_fake) < 0).float().mean())
        rows.append({"eps": eps, "attack": attack, "acc_real": acc_real, "acc_fake": acc_fake,
                     "accuracy": (acc_real + acc_fake) / 2})
    return rows


def g_robustness(G, classifier, x, y, eps_list, steps: int = 10) -> list[dict]:
    """Reconstruction deviation of G(x) = Dec(Enc(x), y) under PGD on x: MSE, PSNR, amplification
    ||G(x') - G(x)|| / ||x' - x||, and how often the evaluator's label of G's output flips."""
    with torch.no_grad():
        clean = G.reconstruct(x, y)
        clean_label = classifier(clean).argmax(1)
    rows = []
    for eps in eps_list:
        x_adv = _attack("pgd", lambda v: (G.reconstruct(v, y) - clean).pow(2).sum(), x, eps, steps, 2)
        with torch.no_grad():
            out = G.reconstruct(x_adv, y)
            mse = float((out - clean).pow(2).mean())
            dx = (x_adv - x).flatten(1).norm(dim=1)
            dg = (out - clean).flatten(1).norm(dim=1)
            amp = float((dg / dx.clamp_min(1e-12)).mean()) if eps > 0 else 0.0
            flips = float((classifier(out).argmax(1) != clean_label).float().mean())
        psnr = 10 * math.log10(4.0 / mse) if mse > 0 else math.inf  # peak-to-peak range is 2, so peak^2 = 4
        rows.append({"eps": eps, "rec_mse": mse, "rec_psnr": psnr, "amplification": amp, "label_flip_rate": flips})
    return rows


def classifier_robustness(classifier, x, y, eps_list, steps: int = 10) -> list[dict]:
    """The evaluator's own accuracy under PGD: the reference curve."""
    rows = []
    for eps in eps_list:
        x_adv = _attack("pgd", lambda v: F.cross_entropy(classifier(v), y), x, eps, steps, 3)
        with torch.no_grad():
            rows.append({"eps": eps, "accuracy": float((classifier(x_adv).argmax(1) == y).float().mean())})
    return rows
