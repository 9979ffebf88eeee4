"""Adversarial attacks, batched and device-agnostic. Each maximises a scalar loss_fn(x)."""
from components.attacks.ead import ead
from components.attacks.fgsm import fgsm
from components.attacks.pgd import pgd

ATTACKS = {"fgsm": fgsm, "pgd": pgd, "ead": ead}

__all__ = ["ATTACKS", "ead", "fgsm", "pgd"]
