"""Registered pure metric functions: (inputs) -> dict[str, float]. Pick them by name from these dicts."""
from components.metrics.quality import QUALITY_METRICS
from components.metrics.stability import STABILITY_METRICS, stability_score

__all__ = ["QUALITY_METRICS", "STABILITY_METRICS", "stability_score"]
