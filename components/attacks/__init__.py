"""Adversarial attacks, batched and device-agnostic."""
from components.attacks.fgsm import fgsm

__all__ = ["fgsm"]
