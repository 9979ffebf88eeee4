"""The GAN training loop (pure PyTorch), checkpoints, and the thin Ray Train edge."""
