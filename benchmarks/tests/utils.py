"""Helpers the benchmark tests share."""

from d3hf.distill.config import DistillArguments

# A tiny distillation on digits (8x8 grayscale, 10 classes): two short experts, three unrolled steps.
TINY = dict(dataset="digits", ipc_budget=10.0, decoder="4", num_experts=2, expert_epochs_total=4, max_start_epoch=2,
            expert_epochs=1, student_depth=2, student_width=8, syn_steps=3, samples_per_class=2, mmd_samples=4,
            iterations=50, init_steps=40, eval_epochs=0, checkpoint_every=0, log_every=0)


def tiny_args(**overrides) -> DistillArguments:
    return DistillArguments(**{**TINY, **overrides})
