"""What the matching phase records about itself: drift from its start, each term's gradient,
the MTT loss over fixed segments beside real images', and the validation curve."""

import math

import pytest
import torch
from PIL import Image

from d3hf.distill.config import DistillArguments
from d3hf.distill.objectives import student_endpoint, unroll_student
from d3hf.distill.runner import run_distillation
from d3hf.distill.tracking import read_jsonl, read_metrics
from d3hf.errors import ConfigError
from d3hf.evaluation.image_sets import random_real_images
from d3hf.nn.networks import ConvNet, flat_parameters
from tests.helpers import TINY, make_distiller, tiny_args, weights


def test_student_endpoint_is_the_unrolls_end_without_a_graph():
    torch.manual_seed(0)
    student = ConvNet((1, 8, 8), 10, 2, 8).requires_grad_(False)
    theta0 = flat_parameters(student)
    batches = [(torch.randn(20, 1, 8, 8), torch.randint(0, 10, (20,))) for _ in range(3)]
    step_size = torch.tensor(0.05, requires_grad=True)
    expected = unroll_student(student, theta0.clone(), lambda k: batches[k], step_size, 3)
    got = student_endpoint(student, theta0, batches, step_size)
    assert not got.requires_grad
    assert torch.allclose(got, expected.detach(), atol=1e-6)


def test_drift_starts_at_the_matching_phase_and_survives_a_checkpoint(digits, digits_buffer, tmp_path):
    args = tiny_args(iterations=4)
    straight = make_distiller(digits, digits_buffer, args)
    straight.run(4, show_progress=False)
    first = straight.history[0]
    for key in ("drift_prior_means", "drift_prior_logvars", "drift_decoder"):
        assert 0 < first[key] < straight.history[-1][key], key  # one step away, then further
    start = torch.cat([p.flatten() for p in straight.start["decoder"]])
    now = torch.cat([p.detach().flatten() for p in straight.model.decoders.parameters()])
    assert straight.history[-1]["drift_decoder"] == pytest.approx(float((now - start).norm() / start.norm()), rel=1e-5)
    assert straight.history[-1]["prior_std_mean"] == pytest.approx(
        float(straight.model.prior_logvars.detach().mul(0.5).exp().mean()))

    half = make_distiller(digits, digits_buffer, args)
    half.run(2, show_progress=False)
    half.save_checkpoint(str(tmp_path))
    resumed = make_distiller(digits, digits_buffer, tiny_args(iterations=4, seed=7))  # another initialisation
    assert resumed.load_checkpoint(str(tmp_path))
    resumed.run(4, show_progress=False)
    assert [h["drift_decoder"] for h in resumed.history] == [h["drift_decoder"] for h in straight.history]


def test_each_terms_gradient_norm_is_what_that_term_alone_gives(digits, digits_buffer):
    both = make_distiller(digits, digits_buffer, tiny_args())
    record = both.step()
    mtt_only = make_distiller(digits, digits_buffer, tiny_args(mmd_weight=0.0))  # same draws: MTT's come first
    alone = mtt_only.step()
    assert "grad_norm_mtt" not in alone  # one term: its norm is the whole gradient's
    assert record["mtt"] == pytest.approx(alone["mtt"], rel=1e-6)
    assert record["grad_norm_mtt"] == pytest.approx(math.hypot(alone["grad_norm_priors"], alone["grad_norm_decoder"]),
                                                    rel=1e-4)
    assert record["grad_norm_mmd"] > 0


def test_mtt_reference_is_fixed_and_leaves_the_run_untouched(digits, digits_buffer):
    args = tiny_args(iterations=3)
    plain = make_distiller(digits, digits_buffer, args)
    plain.run(3, show_progress=False)
    probed = make_distiller(digits, digits_buffer, args)
    real = random_real_images(digits, 10, 0)
    first = probed.mtt_reference(3, (real.images, real.labels))
    assert probed.mtt_reference(3, (real.images, real.labels)) == first  # the same segments and noise
    assert set(first) == {"mtt_model", "mtt_real"} and all(0 < v < 2 for v in first.values())
    assert all(p.grad is None for p in probed.model.parameters())
    probed.run(3, show_progress=False)
    assert [h["loss"] for h in probed.history] == [h["loss"] for h in plain.history]


def test_eval_every_needs_a_validation_split_and_an_evaluation():
    with pytest.raises(ConfigError, match="validation_size"):
        DistillArguments(**TINY, eval_every=2)
    with pytest.raises(ConfigError, match="eval_epochs"):
        DistillArguments(**{**TINY, "eval_epochs": 0}, eval_every=2, validation_size=0.2)


def test_a_run_with_a_validation_curve_distils_what_it_would_without(tmp_path):
    settings = {**TINY, "iterations": 4, "validation_size": 0.2, "eval_epochs": 3, "log_every": 1,
                "report_to": "none", "num_threads": 1}
    run_distillation(DistillArguments(**settings, output_dir=str(tmp_path / "plain")), show_progress=False)
    out = tmp_path / "curve"
    run_distillation(DistillArguments(**settings, eval_every=2, output_dir=str(out)), show_progress=False)
    plain, curved = weights(tmp_path / "plain"), weights(out)
    assert all(torch.equal(plain[k], curved[k]) for k in plain)

    curve = [r for r in read_metrics(str(out)) if r["phase"] == "curve"]
    assert [r["iteration"] for r in curve] == [0, 2, 4]  # the warm start first
    for r in curve:
        assert r["split"] == "validation" and 0 <= r["accuracy"] <= 1 and r["mtt_model"] > 0 and r["mtt_real"] > 0
    final = [r for r in read_jsonl(str(out / "metrics.jsonl")) if r["method"] == "d3hf artifact"]
    assert final[0]["accuracy"] == pytest.approx(curve[-1]["accuracy"])  # the same network as the evaluation's
    with Image.open(out / "curves.png") as image:
        image.verify()
