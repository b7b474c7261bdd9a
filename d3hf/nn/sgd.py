"""The one supervised training step every classifier in d3hf takes (experts, evaluation networks)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F


def train_epoch(net: torch.nn.Module, opt: torch.optim.Optimizer,
                batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """One pass over ``batches`` of (normalised inputs, class ids): cross-entropy, backward, step.
    Returns the epoch's mean training loss and accuracy (of each batch before its step)."""
    loss_sum = torch.zeros(())
    correct = torch.zeros((), dtype=torch.long)
    seen = 0
    for x, y in batches:
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        # Summed on the device and read once per epoch: no synchronisation per batch on a GPU.
        loss_sum = loss_sum.to(loss.device) + loss.detach().float() * len(y)
        correct = correct.to(y.device) + (logits.detach().argmax(1) == y).sum()
        seen += len(y)
    seen = max(seen, 1)
    return {"loss": float(loss_sum) / seen, "accuracy": float(correct) / seen}
