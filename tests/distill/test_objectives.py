"""The two objective terms: unbiased MMD^2 and the unrolled trajectory-matching loss."""

import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

from d3hf.distill.objectives import compiled_inner_step, mmd2_unbiased, trajectory_matching_loss, unroll_student
from d3hf.modeling.decoders import build_decoder, family_spec
from d3hf.nn.networks import ConvNet, flat_parameters

BANDWIDTHS = (1, 2, 4, 8, 16)


def mmd2_reference(x, y, bandwidths, scale=1.0) -> float:
    """Unbiased MMD^2 by explicit double loops in float64."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)

    def k(a, b):
        d = float(((a - b) ** 2).sum())
        return sum(math.exp(-d / (2.0 * s * s * scale)) for s in bandwidths)

    n, m = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return sxx + syy - 2.0 * sxy


@pytest.mark.parametrize("scale", [1.0, 3.0])
@pytest.mark.parametrize("n, m, d", [(5, 7, 3), (30, 28, 6)])  # the larger case takes cdist's matmul path
def test_mmd2_matches_double_loop_reference(scale, n, m, d):
    g = torch.Generator().manual_seed(n + d)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 2.0
    y = torch.randn(m, d, generator=g, dtype=torch.float64) * 2.0 + 0.5
    value, stats = mmd2_unbiased(x, y, BANDWIDTHS, scale)
    assert value.dtype == torch.float64
    assert float(value) == pytest.approx(mmd2_reference(x, y, BANDWIDTHS, scale), abs=1e-10)
    assert set(stats) == {"kxx", "kyy", "kxy"}
    assert all(0.0 <= v <= 1.0 for v in stats.values())


def test_mmd2_with_tensor_scale_matches_float_scale():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    a, _ = mmd2_unbiased(x, y, BANDWIDTHS, 2.5)
    b, _ = mmd2_unbiased(x, y, BANDWIDTHS, torch.tensor(2.5))
    torch.testing.assert_close(a, b)


def test_mmd2_is_unbiased_under_the_null():
    """Mean over independent draws from one distribution is ~0, within a few standard errors."""
    g = torch.Generator().manual_seed(0)
    values = []
    for _ in range(200):
        x = torch.randn(10, 3, generator=g, dtype=torch.float64)
        y = torch.randn(10, 3, generator=g, dtype=torch.float64)
        values.append(float(mmd2_unbiased(x, y, BANDWIDTHS)[0]))
    values = np.array(values)
    stderr = values.std(ddof=1) / np.sqrt(len(values))
    assert abs(values.mean()) < 4 * stderr
    assert (values < 0).any()  # an unbiased estimate goes negative; a biased (V-statistic) one never does


def test_mmd2_grows_with_the_mean_shift():
    g = torch.Generator().manual_seed(0)

    def mean_mmd(shift):
        out = []
        for _ in range(20):
            x = torch.randn(30, 3, generator=g, dtype=torch.float64)
            y = torch.randn(30, 3, generator=g, dtype=torch.float64) + shift
            out.append(float(mmd2_unbiased(x, y, BANDWIDTHS)[0]))
        return np.mean(out)

    small, medium, large = mean_mmd(0.5), mean_mmd(1.0), mean_mmd(2.0)
    assert 0 < small < medium < large


def test_trajectory_matching_loss_value():
    start = torch.zeros(4)
    target = torch.tensor([2.0, 0.0, 0.0, 0.0])
    assert float(trajectory_matching_loss(start, start, target)) == pytest.approx(1.0)
    assert float(trajectory_matching_loss(target, start, target)) == 0.0
    theta_n = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert float(trajectory_matching_loss(theta_n, start, target)) == pytest.approx(2.0 / 4.0)


# ----------------------------------------------------------------------------- MTT gradients

SYN_STEPS = 3


def _mtt_problem():
    """A tiny float64 MTT loss as a function of (prior means, decoder stem weight, step size)."""
    torch.manual_seed(0)
    f64 = torch.float64
    student = ConvNet((1, 4, 4), 3, depth=1, width=2).double().requires_grad_(False)
    decoder = build_decoder(family_spec([1, 4, 4], 3, 2)).double().requires_grad_(False)
    base = {k: v.detach() for k, v in decoder.named_parameters()}
    theta0 = flat_parameters(student)
    target = theta0 + 0.1 * torch.randn(theta0.shape, dtype=f64)
    noise = torch.randn(SYN_STEPS, 6, 3, dtype=f64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])

    def loss(means, stem_weight, step_size, checkpoint_steps=False, step_fn=None):
        params = {**base, "stem.weight": stem_weight}

        def make_batch(step):
            z = means[labels] + 0.5 * noise[step]
            return functional_call(decoder, params, (z,)), labels

        theta_n = unroll_student(student, theta0.clone(), make_batch, step_size, SYN_STEPS, checkpoint_steps,
                                 [means, stem_weight], step_fn)
        return trajectory_matching_loss(theta_n, theta0, target)

    loss.student = student
    inputs = (
        torch.randn(3, 3, dtype=f64, requires_grad=True),
        base["stem.weight"].clone().requires_grad_(True),
        torch.tensor(0.5, dtype=f64, requires_grad=True),
    )
    return loss, inputs


@pytest.mark.parametrize("checkpoint_steps", [False, True])
def test_mtt_loss_gradcheck_float64(checkpoint_steps):
    loss, inputs = _mtt_problem()
    assert torch.autograd.gradcheck(lambda *a: loss(*a, checkpoint_steps), inputs)


def test_mtt_loss_gradients_match_central_differences():
    """Gradients reach the priors, the decoder and the step size (finite differences at eps 1e-3,
    loose enough for the float32 cross-entropy inside the unroll)."""
    loss, inputs = _mtt_problem()
    grads = torch.autograd.grad(loss(*inputs), inputs)
    eps = 1e-3
    for which, (value, grad) in enumerate(zip(inputs, grads)):
        assert grad.abs().max() > 1e-4  # each input really influences the loss
        flat = value.detach().reshape(-1)
        for i in range(0, flat.numel(), max(1, flat.numel() // 6)):
            plus, minus = flat.clone(), flat.clone()
            plus[i] += eps
            minus[i] -= eps
            args_p = [x.detach() for x in inputs]
            args_m = [x.detach() for x in inputs]
            args_p[which] = plus.view_as(value)
            args_m[which] = minus.view_as(value)
            with torch.enable_grad():
                numeric = (float(loss(*args_p).detach()) - float(loss(*args_m).detach())) / (2 * eps)
            assert numeric == pytest.approx(float(grad.reshape(-1)[i]), rel=2e-2, abs=2e-4), (which, i)


def test_checkpointed_unroll_equals_plain_unroll():
    loss, inputs = _mtt_problem()
    plain = loss(*inputs, False)
    plain_grads = torch.autograd.grad(plain, inputs)
    ckpt = loss(*inputs, True)
    ckpt_grads = torch.autograd.grad(ckpt, inputs)
    torch.testing.assert_close(ckpt, plain, atol=1e-6, rtol=0)
    for a, b in zip(ckpt_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.integration  # torch.compile takes tens of seconds
def test_compiled_inner_step_gives_the_eager_loss_and_gradients():
    loss, inputs = _mtt_problem()
    eager = loss(*inputs)
    eager_grads = torch.autograd.grad(eager, inputs)
    compiled = loss(*inputs, step_fn=compiled_inner_step(loss.student))
    compiled_grads = torch.autograd.grad(compiled, inputs)
    torch.testing.assert_close(compiled, eager, atol=1e-9, rtol=1e-7)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


def test_checkpointed_unroll_needs_the_batch_inputs():
    student = ConvNet((1, 4, 4), 3, depth=1, width=2)
    with pytest.raises(ValueError, match="batch_inputs"):
        unroll_student(student, flat_parameters(student), lambda s: None, torch.tensor(0.1), 2, True)
