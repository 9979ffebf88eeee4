"""Reusable GAN building blocks: data, models, losses, training, metrics, attacks, registry.

Nothing in here knows about the pipeline DAG; the pipeline package composes these pieces.
"""
