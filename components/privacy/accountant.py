"""Epsilon over the DP-SGD steps actually taken: Opacus's RDP accountant of the Poisson-subsampled Gaussian
mechanism, with a state small enough to live in a checkpoint, so a resumed run keeps counting."""
from __future__ import annotations


class PrivacyAccountant:
    """Counts (noise multiplier, sample rate) steps; `epsilon(delta)` for everything counted so far."""

    def __init__(self, history: list[tuple[float, float, int]] | None = None):
        from opacus.accountants import RDPAccountant

        self._rdp = RDPAccountant()
        self._rdp.history = [tuple(h) for h in history or []]

    def step(self, noise_multiplier: float, sample_rate: float) -> None:
        self._rdp.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)

    @property
    def steps(self) -> int:
        return sum(int(n) for _, _, n in self._rdp.history)

    def epsilon(self, delta: float) -> float:
        import warnings

        with warnings.catch_warnings():  # "optimal order is the largest alpha": a looser bound, still a bound
            warnings.simplefilter("ignore", UserWarning)
            return float(self._rdp.get_epsilon(delta)) if self._rdp.history else 0.0

    def state_dict(self) -> dict:
        """Plain numbers only: checkpoints load with weights_only."""
        return {"history": [[float(s), float(q), int(n)] for s, q, n in self._rdp.history]}

    @classmethod
    def from_state_dict(cls, state: dict) -> "PrivacyAccountant":
        return cls([(s, q, int(n)) for s, q, n in state.get("history", [])])


def noise_for_target(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier whose epsilon after `steps` Poisson-subsampled steps is <= target."""
    import warnings

    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():  # "optimal order is the largest alpha": a looser bound, still a bound
        warnings.simplefilter("ignore", UserWarning)
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                          sample_rate=sample_rate, steps=steps, accountant="rdp"))


def default_delta(n_train: int) -> float:
    """1/N, the issue's default; the usual advice is delta well below 1/N, which privacy.delta allows."""
    return 1.0 / max(1, n_train)


def privacy_summary(checkpoint: dict) -> dict[str, float]:
    """epsilon, delta, noise multiplier and DP steps of a checkpoint trained with DP-SGD; {} otherwise (no
    epsilon at all: a promotion gate on it then fails, as it should)."""
    state = checkpoint.get("privacy") or {}
    if not state:
        return {}
    accountant = PrivacyAccountant.from_state_dict(state)
    return {"epsilon": accountant.epsilon(state["delta"]), "delta": float(state["delta"]),
            "noise_multiplier": float(state["noise_multiplier"]), "dp_steps": float(accountant.steps)}
