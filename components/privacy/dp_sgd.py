"""DP-SGD for the discriminator: Opacus's hooks give each row of D's batch its own gradient; each is clipped
to C, the clipped sum gets Gaussian noise of std sigma * C, and the result, divided by the expected number of
private examples, replaces D's gradient. One D step is one accountant step.

Why the guarantee holds: D's batch is cat(real, fake). Adding or removing one private image changes one real
row, whose clipped gradient moves the sum by at most C. The fake rows come from G, which is trained only on
D's outputs for noise (never on private images under DP), which is post-processing of the privatised D.
"""
from __future__ import annotations

import contextlib
import warnings

import torch

from components.data.reader import PoissonSampler
from components.errors import UserError
from components.privacy.accountant import PrivacyAccountant, default_delta, noise_for_target
from components.privacy.config import PrivacyConfig


def clip_and_sum(per_row: list[torch.Tensor], bound: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each row's gradient (rows along dim 0 of every tensor in `per_row`, one tensor per parameter) scaled
    to norm at most `bound`, summed over rows; also the rows' norms before clipping."""
    norms = torch.linalg.vector_norm(torch.stack([g.flatten(1).norm(dim=1) for g in per_row], dim=1), dim=1)
    factor = (bound / (norms + 1e-6)).clamp(max=1.0)
    return [torch.einsum("i,i...->...", factor, g) for g in per_row], norms


class DPSGD:
    """The privacy mechanism of one training run: D's per-sample hooks, the noise, and the accountant."""

    def __init__(self, D: torch.nn.Module, cfg: PrivacyConfig, sampler: PoissonSampler, planned_steps: int, seed: int):
        """sampler: the private batches; its rate is the one the accountant counts."""
        from opacus import GradSampleModule
        from opacus.validators import ModuleValidator

        # Opacus's full backward hooks fire on D's first layer although the images need no gradient: expected.
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
        problems = ModuleValidator.validate(D, strict=False)
        if problems:
            raise UserError(f"privacy.enabled: D has a layer Opacus cannot give per-sample gradients ({problems[0]}); "
                            "set model.d_norm=none")
        self.hooks = GradSampleModule(D, batch_first=True, loss_reduction="sum")  # hooks on D's own layers
        self.sample_rate = sampler.rate
        self.expected_batch = sampler.batch_size
        self.delta = cfg.delta or default_delta(len(sampler.data.labels))
        self.bound = cfg.max_grad_norm
        self.sigma = cfg.noise_multiplier or noise_for_target(cfg.target_epsilon, self.delta, self.sample_rate,
                                                              planned_steps)
        self.accountant = PrivacyAccountant()
        self.noise = torch.Generator().manual_seed(seed + 104729)

    def privatise(self, D: torch.nn.Module, row_scale: torch.Tensor) -> torch.Tensor:
        """After backward of D's loss: replace D's gradients by the DP-SGD estimate and count the step.
        row_scale turns each row's share of the loss (the loss averages its real and its fake rows) back into
        that row's own gradient. Returns the norm of the noisy gradient."""
        params = [p for p in D.parameters() if p.requires_grad]
        per_row = [p.grad_sample * row_scale.view(-1, *[1] * (p.grad_sample.dim() - 1)) for p in params]
        clipped, _ = clip_and_sum(per_row, self.bound)
        for p, g in zip(params, clipped):
            noise = torch.normal(0.0, self.sigma * self.bound, size=tuple(p.shape), generator=self.noise)
            p.grad = (g + noise.to(p.device)) / self.expected_batch
            p.grad_sample = None
        self.accountant.step(self.sigma, self.sample_rate)
        return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))

    @contextlib.contextmanager
    def hooks_paused(self):
        """No per-sample capture while G's loss runs through D (D's own gradients are not wanted then)."""
        self.hooks.disable_hooks()
        try:
            yield
        finally:
            self.hooks.enable_hooks()

    def epsilon(self) -> float:
        return self.accountant.epsilon(self.delta)

    def state_dict(self) -> dict:
        return {**self.accountant.state_dict(), "noise": self.noise.get_state(), "delta": self.delta,
                "noise_multiplier": self.sigma, "sample_rate": self.sample_rate}

    def load_state_dict(self, state: dict) -> None:
        """A resumed run continues the saved accounting (and noise stream) with the saved noise multiplier."""
        self.accountant = PrivacyAccountant.from_state_dict(state)
        self.noise.set_state(state["noise"])
        self.sigma = float(state["noise_multiplier"])
