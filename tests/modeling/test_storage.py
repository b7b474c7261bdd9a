"""The storage ledger, the reference decoder figures and the budget planner."""

import pytest
import torch
from safetensors import safe_open

from d3hf import D3Config, D3Model, estimate_storage, family_spec, reference_spec
from d3hf.distill.budget import BudgetError, plan_representation
from d3hf.modeling.decoders import FAMILIES, DecoderSpec, build_decoder

IMAGENET_CLASSES = [f"n{i:04d}" for i in range(1000)]


def _stored_scalars(path) -> dict:
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k).numel() for k in f.keys()}


@pytest.mark.parametrize("soft_labels", [False, True])
def test_ledger_counts_every_saved_tensor(tmp_path, soft_labels):
    spec = family_spec([1, 8, 8], 4, 3).to_dict()
    cfg = D3Config(class_names=[str(i) for i in range(10)], image_shape=[1, 8, 8], z_dim=4, priors_per_class=3,
                   decoders=[spec, spec], subtasks=[[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]], soft_labels=soft_labels)
    model = D3Model(cfg)
    model.save_pretrained(str(tmp_path))
    stored = _stored_scalars(tmp_path)
    ledger = model.storage()
    assert ledger.total_scalars == sum(stored.values())
    assert ledger.components["decoder_1"] == sum(n for k, n in stored.items() if k.startswith("decoders.1."))
    assert ledger.components["prior_means"] == 30 * 4
    assert ("soft_labels" in ledger.components) == soft_labels
    assert ledger.total_bytes == 4 * ledger.total_scalars
    assert ledger.ipc_equivalent == pytest.approx(ledger.total_scalars / 640)

    estimate = estimate_storage(cfg)
    assert estimate.components == ledger.components
    assert estimate.total_bytes == ledger.total_bytes


@pytest.mark.parametrize(
    "name, params", [("small", 789_187), ("medium", 5_774_691), ("large", 6_308_547)]
)
def test_reference_decoder_parameter_counts(name, params):
    spec = reference_spec(name)
    assert spec.num_parameters() == params
    with torch.device("meta"):
        decoder = build_decoder(spec)
        out = decoder(torch.empty(2, spec.z_dim))
    assert sum(p.numel() for p in decoder.parameters()) == params
    assert tuple(out.shape) == (2, 3, 64, 64)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 64, 64), (3, 12, 16), (1, 5, 7)])
def test_family_decoder_counts_and_output_shape(shape, family):
    spec = family_spec(shape, 8, 3, family)
    assert DecoderSpec.from_dict(spec.to_dict()) == spec
    decoder = build_decoder(spec)
    assert spec.num_parameters() == sum(p.numel() for p in decoder.parameters())
    with torch.no_grad():
        out = decoder(torch.randn(2, 8))
    assert tuple(out.shape) == (2, *shape)
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_transpose_family_is_the_reference_layout_at_an_eighth_of_the_flops():
    """At 32x32x3, z 64, width 16 the family is the reference code's small CIFAR decoder
    (Linear to 128x2x2, transposed convs 128-64-32-16-16, 3x3 conv to the image: 210,227
    parameters); the nearest family of about that size costs ~8x its FLOPs per image."""
    from torch.utils.flop_counter import FlopCounterMode

    def flops(spec):
        with FlopCounterMode(display=False) as counter:
            build_decoder(spec)(torch.zeros(1, 64))
        return counter.get_total_flops()

    transpose = family_spec((3, 32, 32), 64, 16, "transpose")
    assert transpose.channels == [128, 64, 32, 16, 16] and transpose.num_parameters() == 210_227
    nearest = family_spec((3, 32, 32), 64, 22, "nearest")
    assert abs(nearest.num_parameters() / transpose.num_parameters() - 1) < 0.02
    assert flops(nearest) > 7 * flops(transpose)


def test_a_transposed_stage_may_only_double_its_input():
    with pytest.raises(ValueError, match="at most doubles"):
        DecoderSpec(8, [1, 28, 28], [4, 4], [7, 7], upsample="transpose4", stage_sizes=[[15, 14]])
    # an odd size is cropped from the doubled map: 4 -> 8 -> 7
    spec = DecoderSpec(8, [1, 14, 14], [4, 4, 4], [4, 4], upsample="transpose4", stage_sizes=[[7, 7], [14, 14]])
    assert tuple(build_decoder(spec)(torch.zeros(1, 8)).shape) == (1, 1, 14, 14)


def _imagenet_config(name: str, num_decoders: int, z_dim: int, lpc: int) -> D3Config:
    per = 1000 // num_decoders
    return D3Config(
        class_names=IMAGENET_CLASSES,
        image_shape=[3, 64, 64],
        z_dim=z_dim,
        priors_per_class=lpc,
        decoders=[reference_spec(name).to_dict() for _ in range(num_decoders)],
        subtasks=[list(range(i * per, (i + 1) * per)) for i in range(num_decoders)],
    )


@pytest.mark.parametrize(
    "name, num_decoders, z_dim, lpc, ipc",
    [("small", 5, 64, 1, 0.33), ("medium", 2, 2048, 2, 1.61), ("large", 5, 4096, 10, 9.23)],
)
def test_reference_imagenet_ipc_equivalents(name, num_decoders, z_dim, lpc, ipc):
    cfg = _imagenet_config(name, num_decoders, z_dim, lpc)
    ledger = estimate_storage(cfg)
    assert ledger.ipc_equivalent == pytest.approx(ipc, abs=0.01)
    assert ledger.scalars_per_ipc == 1000 * 3 * 64 * 64


def test_reference_imagenet_meta_model_matches_estimate():
    cfg = _imagenet_config("large", 5, 4096, 10)
    with torch.device("meta"):
        model = D3Model(cfg)
    built = model.storage()
    estimate = estimate_storage(cfg)
    assert built.components == estimate.components
    assert built.total_scalars == 5 * 6_308_547 + 1000 * 10 * 2 * 4096
    assert built.ipc_equivalent == pytest.approx(9.23, abs=0.01)


# ----------------------------------------------------------------------------- budget planner

GRID_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 64, 64)]


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_plan_fills_at_least_80_percent_and_never_exceeds_the_budget(family):
    checked = 0
    for shape in GRID_SHAPES:
        for ipc in (1, 2, 10, 50):
            for classes in (10, 100):
                for subtasks in (1, 2):
                    try:
                        plan = plan_representation(ipc, classes, shape, subtasks, family=family)
                    except BudgetError:
                        continue
                    where = (shape, ipc, classes, subtasks)
                    assert plan.budget_scalars == int(ipc * classes * shape[0] * shape[1] * shape[2])
                    assert plan.used_scalars <= plan.budget_scalars, where
                    assert plan.used_scalars >= 0.8 * plan.budget_scalars, where
                    assert len(plan.decoder_specs) == subtasks
                    assert plan.decoder_specs[0].upsample == ("nearest" if family == "nearest" else "transpose4")
                    # the ledger of the planned config agrees with the plan
                    cfg = D3Config(class_names=[str(i) for i in range(classes)], image_shape=list(shape),
                                   z_dim=plan.z_dim, priors_per_class=plan.lpc,
                                   decoders=[s.to_dict() for s in plan.decoder_specs],
                                   subtasks=[list(range(classes))[s::subtasks] for s in range(subtasks)])
                    assert estimate_storage(cfg).total_scalars == plan.used_scalars, where
                    checked += 1
    assert checked >= 40


def test_digits_at_one_ipc_has_a_plan():
    plan = plan_representation(1, 10, (1, 8, 8))
    assert 0.8 * 640 <= plan.used_scalars <= 640
    assert plan.lpc >= 1 and plan.z_dim >= 4


def test_explicit_values_are_kept():
    plan = plan_representation(10, 10, (1, 8, 8), z_dim=8, decoder="3", lpc=2)
    assert (plan.z_dim, plan.lpc) == (8, 2)
    assert plan.decoder_specs[0].to_dict() == family_spec((1, 8, 8), 8, 3).to_dict()


def test_too_small_budget_is_refused():
    with pytest.raises(BudgetError, match="ipc_budget"):
        plan_representation(0.01, 10, (1, 8, 8))


def test_reference_decoder_on_other_shapes_is_refused():
    with pytest.raises(BudgetError, match="3x64x64"):
        plan_representation(10, 10, (1, 28, 28), decoder="small")
