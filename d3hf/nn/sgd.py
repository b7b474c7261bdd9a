"""The one supervised training step every classifier in d3hf takes (experts, evaluation networks)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F


def train_epoch(net: torch.nn.Module, opt: torch.optim.Optimizer,
                batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """One pass over ``batches`` of (normalised inputs, class ids): cross-entropy, backward, step."""
    for x, y in batches:
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
