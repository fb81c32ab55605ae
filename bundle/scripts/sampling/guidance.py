"""Classifier-free tumor guidance: push each denoising step away from the same chest without its tumor (MAISI's recipe).

The ControlNet predicts the noise twice per step, once with the requested (tumor, lungs) mask and once with the
tumor removed (relabelled as lung where lungs are given); the step follows
`removed + guidance_scale * (tumor - removed)`. A scale of 1 is plain conditioning, larger scales exaggerate what
the tumor changes. Both predictions run as one batch.
"""

from __future__ import annotations

import numbers

import torch

from scripts.transforms.conditioning import without_tumor

#: Accepted guidance scales: 0 samples the tumor-removed chest, 1 is plain conditioning; 20 lies far past any useful one.
GUIDANCE_RANGE = (0.0, 20.0)


def check_guidance_scale(guidance_scale: float) -> float:
    """`guidance_scale` as a float within GUIDANCE_RANGE, else a ValueError naming it."""
    low, high = GUIDANCE_RANGE
    real = isinstance(guidance_scale, numbers.Real) and not isinstance(guidance_scale, bool)
    if not real or not low <= guidance_scale <= high:
        raise ValueError(f"guidance_scale must be between {low:g} and {high:g}, got {guidance_scale!r}")
    return float(guidance_scale)


class TumorGuidance(torch.nn.Module):
    """A ControlledUNet under classifier-free guidance whose unconditional branch is the tumor-removed mask."""

    def __init__(self, controlled: torch.nn.Module, guidance_scale: float) -> None:
        super().__init__()
        self.controlled, self.guidance_scale = controlled, check_guidance_scale(guidance_scale)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        both = self.controlled(
            torch.cat([x, x]),
            timesteps=torch.cat([timesteps, timesteps]),
            context=torch.cat([context, without_tumor(context)]),
        )
        tumor, removed = both.chunk(2)
        return removed + self.guidance_scale * (tumor - removed)
