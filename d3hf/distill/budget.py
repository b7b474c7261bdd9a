"""Choosing a representation (z_dim, decoder, priors per class) that fits an IPC budget.

The rule for ``auto`` values, for K classes, images of C x H x W, S subtasks and a budget of
B = ipc_budget * K * C * H * W scalars:

1. ``z_dim``: the largest of 4, 8, 16, 32, 64 whose priors at one prior per class
   (K * 2 * z_dim scalars) take at most 10 % of B (at least 4).
2. ``decoder``: the chosen family (``decoders.family_spec``) at the largest integer width for
   which S decoders plus a target number of priors fit in B; the target is one prior per
   class, or as many as 25 % of B holds (at most ``MAX_AUTO_LPC``) when that is more.
3. ``lpc``: then fill what the decoders leave: floor((B - decoders) / prior_cost), at most
   ``MAX_AUTO_LPC``; ``prior_cost`` is K * 2 * z_dim scalars, plus K * K with soft labels.

With integer widths this uses at least 80 % of the budget for every budget that admits a
decoder (checked by the tests over a grid of shapes and budgets).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import D3HFError
from ..modeling.decoders import DEFAULT_FAMILY, DecoderSpec, family_spec, reference_spec
from ..modeling.storage import prior_scalars

Z_CHOICES = (4, 8, 16, 32, 64)
MAX_AUTO_LPC = 256


class BudgetError(D3HFError, ValueError):
    """The requested representation does not fit the storage budget."""


def prior_cost(num_classes: int, z_dim: int, soft_labels: bool = False, label_dim: int | None = None) -> int:
    """Scalars of one prior per class: mean and log-variance, plus a soft label if stored
    (``label_dim`` entries, by default ``num_classes``)."""
    return sum(prior_scalars(num_classes, z_dim, (label_dim or num_classes) if soft_labels else 0).values())


@dataclass
class Plan:
    z_dim: int
    lpc: int
    decoder_specs: list[DecoderSpec]
    budget_scalars: int
    num_classes: int
    soft_labels: bool = False
    label_dim: int | None = None

    @property
    def prior_scalars(self) -> int:
        return self.lpc * prior_cost(self.num_classes, self.z_dim, self.soft_labels, self.label_dim)

    @property
    def used_scalars(self) -> int:
        return sum(s.num_parameters() for s in self.decoder_specs) + self.prior_scalars


def budget_scalars(ipc_budget: float, num_classes: int, image_shape) -> int:
    c, h, w = image_shape
    return int(ipc_budget * num_classes * c * h * w)


def _decoder_for(decoder, image_shape, z_dim: int, family: str) -> DecoderSpec:
    if isinstance(decoder, dict):  # a spec; z_dim and out_shape default to the run's
        try:
            spec = DecoderSpec.from_dict({"z_dim": z_dim, "out_shape": list(image_shape), **decoder})
        except (TypeError, ValueError) as err:
            raise BudgetError(f"decoder spec {decoder}: {err}") from None
        if list(spec.out_shape) != list(image_shape):
            raise BudgetError(f"decoder spec makes {spec.out_shape} images; the data is {list(image_shape)}")
        return spec
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
    return family_spec(image_shape, z_dim, width, family)


def plan_representation(
    ipc_budget: float,
    num_classes: int,
    image_shape,
    num_subtasks: int = 1,
    z_dim="auto",
    decoder="auto",
    lpc="auto",
    soft_labels: bool = False,
    label_dim: int | None = None,
    family: str = DEFAULT_FAMILY,
) -> Plan:
    """Resolve ``auto`` values by the module's rule; refuse what cannot fit ``ipc_budget``.

    With ``soft_labels`` each prior also costs ``label_dim`` (default ``num_classes``)
    scalars: its stored soft label. ``family`` names the decoder family an ``auto`` or integer
    ``decoder`` is taken from.
    """
    budget = budget_scalars(ipc_budget, num_classes, image_shape)
    if z_dim == "auto":
        fits = [z for z in Z_CHOICES if num_classes * 2 * z <= 0.10 * budget]
        z_dim = fits[-1] if fits else Z_CHOICES[0]
    z_dim = int(z_dim)
    if isinstance(decoder, str) and decoder in ("small", "medium", "large"):
        z_dim = reference_spec(decoder).z_dim
    per_prior = prior_cost(num_classes, z_dim, soft_labels, label_dim)
    if decoder == "auto":
        if lpc == "auto":
            target = max(1, min(MAX_AUTO_LPC, int(0.25 * budget // per_prior)))
        else:
            target = int(lpc)
        room = budget - target * per_prior
        width = 0
        while num_subtasks * family_spec(image_shape, z_dim, width + 1, family).num_parameters() <= room:
            width += 1
        if width == 0:
            smallest = num_subtasks * family_spec(image_shape, z_dim, 1, family).num_parameters() + target * per_prior
            raise BudgetError(
                f"ipc_budget {ipc_budget} gives {budget:,} scalars, but the smallest decoder"
                f"{'s' if num_subtasks > 1 else ''} plus {target} prior(s) per class need {smallest:,}. "
                "Raise ipc_budget, lower z_dim, or use fewer subtasks."
            )
        spec = family_spec(image_shape, z_dim, width, family)
    else:
        spec = _decoder_for(decoder, image_shape, z_dim, family)
        if spec.z_dim != z_dim:
            z_dim = spec.z_dim
            per_prior = prior_cost(num_classes, z_dim, soft_labels, label_dim)
    specs = [DecoderSpec.from_dict(spec.to_dict()) for _ in range(num_subtasks)]
    decoder_scalars = sum(s.num_parameters() for s in specs)
    if lpc == "auto":
        lpc = max(1, min(MAX_AUTO_LPC, (budget - decoder_scalars) // per_prior))
    return Plan(z_dim=z_dim, lpc=int(lpc), decoder_specs=specs, budget_scalars=budget, num_classes=num_classes,
                soft_labels=soft_labels, label_dim=label_dim)


def plan_subtasks(
    ipc_budget: float,
    subtasks: list[list[int]],
    image_shape,
    z_dim="auto",
    decoder="auto",
    lpc="auto",
    soft_labels: bool = False,
    family: str = DEFAULT_FAMILY,
) -> Plan:
    """One representation for every subtask: each subtask's decoder and priors must fit the
    share of ``ipc_budget`` its classes bring (``ipc_budget`` images per class).

    All subtasks share z_dim, priors per class and the decoder architecture (chosen for the
    smallest subtask, so larger ones fit too); the plan returned describes the whole artifact.
    Explicit (non-auto) values are checked against each share by ``subtask_overruns``.
    """
    num_classes = sum(len(s) for s in subtasks)
    smallest = min(range(len(subtasks)), key=lambda k: len(subtasks[k]))
    try:
        one = plan_representation(ipc_budget, len(subtasks[smallest]), image_shape, 1, z_dim, decoder, lpc,
                                  soft_labels, label_dim=num_classes, family=family)
    except BudgetError as err:
        raise BudgetError(f"Subtask {smallest} ({len(subtasks[smallest])} classes) gets "
                          f"{budget_scalars(ipc_budget, len(subtasks[smallest]), image_shape):,} scalars of the "
                          f"budget: {err}") from None
    spec = one.decoder_specs[0]
    return Plan(z_dim=one.z_dim, lpc=one.lpc, decoder_specs=[DecoderSpec.from_dict(spec.to_dict()) for _ in subtasks],
                budget_scalars=budget_scalars(ipc_budget, num_classes, image_shape), num_classes=num_classes,
                soft_labels=soft_labels)


def subtask_overruns(plan: Plan, subtasks: list[list[int]], ipc_budget: float, image_shape) -> list[str]:
    """One line per subtask whose decoder and priors exceed its share of ``ipc_budget``."""
    per_prior = prior_cost(1, plan.z_dim, plan.soft_labels, plan.num_classes)
    lines = []
    for k, (classes, spec) in enumerate(zip(subtasks, plan.decoder_specs)):
        share = budget_scalars(ipc_budget, len(classes), image_shape)
        priors = len(classes) * plan.lpc * per_prior
        if spec.num_parameters() + priors > share:
            lines.append(f"subtask {k} ({len(classes)} classes): decoder {spec.num_parameters():,} + priors "
                         f"{priors:,} = {spec.num_parameters() + priors:,} scalars > its share {share:,}")
    return lines
