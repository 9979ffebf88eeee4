"""Differential privacy for the discriminator: DP-SGD (per-sample clipping and Gaussian noise) with an RDP
accountant, Poisson sampling of the private batches, and the checks that keep the guarantee honest."""
