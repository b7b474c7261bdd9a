"""Choosing a representation (z_dim, decoder, priors per class) that fits an IPC budget.

The rule for ``auto`` values, for K classes, images of C x H x W, S subtasks and a budget of
B = ipc_budget * K * C * H * W scalars:

1. ``z_dim``: the largest of 4, 8, 16, 32, 64 whose priors at one prior per class
   (K * 2 * z_dim scalars) take at most 10 % of B (at least 4).
2. ``decoder``: the default family (``decoders.family_spec``) at the largest integer width for
   which S decoders plus a target number of priors fit in B; the target is one prior per
   class, or as many as 25 % of B holds (at most ``MAX_AUTO_LPC``) when that is more.
3. ``lpc``: then fill what the decoders leave: floor((B - decoders) / prior_cost), at most
   ``MAX_AUTO_LPC``; ``prior_cost`` is K * 2 * z_dim scalars, plus K * K with soft labels.

With integer widths this uses at least 80 % of the budget for every budget that admits a
decoder (checked by the tests over a grid of shapes and budgets).
"""

from __future__ import annotations

from dataclasses import dataclass

from .decoders import DecoderSpec, family_spec, reference_spec

Z_CHOICES = (4, 8, 16, 32, 64)
MAX_AUTO_LPC = 256


class BudgetError(ValueError):
    """The requested representation does not fit the storage budget."""


def prior_cost(num_classes: int, z_dim: int, soft_labels: bool = False) -> int:
    """Scalars of one prior per class: mean and log-variance, plus a soft label if stored."""
    return num_classes * (2 * z_dim + (num_classes if soft_labels else 0))


@dataclass
class Plan:
    z_dim: int
    lpc: int
    decoder_specs: list[DecoderSpec]
    budget_scalars: int
    num_classes: int
    soft_labels: bool = False

    @property
    def prior_scalars(self) -> int:
        return self.lpc * prior_cost(self.num_classes, self.z_dim, self.soft_labels)

    @property
    def used_scalars(self) -> int:
        return sum(s.num_parameters() for s in self.decoder_specs) + self.prior_scalars


def budget_scalars(ipc_budget: float, num_classes: int, image_shape) -> int:
    c, h, w = image_shape
    return int(ipc_budget * num_classes * c * h * w)


def _decoder_for(decoder, image_shape, z_dim: int) -> DecoderSpec:
    if isinstance(decoder, dict):
        return DecoderSpec.from_dict(decoder)
    if isinstance(decoder, str) and decoder in ("small", "medium", "large"):
        spec = reference_spec(decoder)
        if list(spec.out_shape) != list(image_shape):
            raise BudgetError(f"decoder {decoder!r} is the reference 3x64x64 decoder; the data is {list(image_shape)}")
        return spec
    try:
        width = int(decoder)
    except (TypeError, ValueError):
        raise BudgetError(f"decoder must be 'auto', an integer width, or small/medium/large; got {decoder!r}")
    if width < 1:
        raise BudgetError(f"decoder width must be >= 1; got {width}")
    return family_spec(image_shape, z_dim, width)


def plan_representation(
    ipc_budget: float,
    num_classes: int,
    image_shape,
    num_subtasks: int = 1,
    z_dim="auto",
    decoder="auto",
    lpc="auto",
    soft_labels: bool = False,
) -> Plan:
    """Resolve ``auto`` values by the module's rule; refuse what cannot fit ``ipc_budget``.

    With ``soft_labels`` each prior also costs ``num_classes`` scalars (its stored soft label).
    """
    budget = budget_scalars(ipc_budget, num_classes, image_shape)
    if z_dim == "auto":
        fits = [z for z in Z_CHOICES if num_classes * 2 * z <= 0.10 * budget]
        z_dim = fits[-1] if fits else Z_CHOICES[0]
    z_dim = int(z_dim)
    if isinstance(decoder, str) and decoder in ("small", "medium", "large"):
        z_dim = reference_spec(decoder).z_dim
    per_prior = prior_cost(num_classes, z_dim, soft_labels)
    if decoder == "auto":
        if lpc == "auto":
            target = max(1, min(MAX_AUTO_LPC, int(0.25 * budget // per_prior)))
        else:
            target = int(lpc)
        room = budget - target * per_prior
        width = 0
        while num_subtasks * family_spec(image_shape, z_dim, width + 1).num_parameters() <= room:
            width += 1
        if width == 0:
            smallest = num_subtasks * family_spec(image_shape, z_dim, 1).num_parameters() + target * per_prior
            raise BudgetError(
                f"ipc_budget {ipc_budget} gives {budget:,} scalars, but the smallest decoder"
                f"{'s' if num_subtasks > 1 else ''} plus {target} prior(s) per class need {smallest:,}. "
                "Raise ipc_budget, lower z_dim, or use fewer subtasks."
            )
        spec = family_spec(image_shape, z_dim, width)
    else:
        spec = _decoder_for(decoder, image_shape, z_dim)
        if spec.z_dim != z_dim:
            z_dim = spec.z_dim
            per_prior = prior_cost(num_classes, z_dim, soft_labels)
    specs = [DecoderSpec.from_dict(spec.to_dict()) for _ in range(num_subtasks)]
    decoder_scalars = sum(s.num_parameters() for s in specs)
    if lpc == "auto":
        lpc = max(1, min(MAX_AUTO_LPC, (budget - decoder_scalars) // per_prior))
    return Plan(z_dim=z_dim, lpc=int(lpc), decoder_specs=specs, budget_scalars=budget, num_classes=num_classes,
                soft_labels=soft_labels)
