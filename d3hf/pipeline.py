"""``d3hf distill``: dataset -> experts -> distiller -> artifact -> evaluation."""

from __future__ import annotations

import json
import logging
import os
import time

import torch

from .arguments import DistillArguments
from .budget import BudgetError, plan_representation
from .configuration_d3 import D3Config
from .data import ImageClassificationData, load_image_classification
from .engine import Distiller
from .experts import ExpertSettings, build_expert_buffer
from .io_utils import atomic_directory, atomic_write_json
from .modeling_d3 import D3Model
from .storage import estimate_storage

logger = logging.getLogger(__name__)

RUN_FILE = "run_config.json"
ARTIFACT_DIR = "artifact"


class RunConflictError(ValueError):
    """``output_dir`` holds a run with different settings."""


def load_data(args: DistillArguments) -> ImageClassificationData:
    return load_image_classification(
        args.dataset,
        image_column=args.image_column,
        label_column=args.label_column,
        train_split=args.train_split,
        test_split=args.test_split,
        test_size=args.test_size,
        split_seed=args.seed,
        config_name=args.dataset_config,
        revision=args.dataset_revision,
    )


def build_config(args: DistillArguments, data: ImageClassificationData) -> D3Config:
    """The artifact's config for this run; refuses a representation over ``ipc_budget``."""
    plan = plan_representation(args.ipc_budget, data.num_classes, data.image_shape, 1, args.z_dim, args.decoder,
                               args.lpc, soft_labels=args.soft_labels)
    mean, std = data.normalization()
    config = D3Config(
        class_names=data.class_names,
        image_shape=list(data.image_shape),
        z_dim=plan.z_dim,
        priors_per_class=plan.lpc,
        decoders=[s.to_dict() for s in plan.decoder_specs],
        normalization_mean=mean,
        normalization_std=std,
        soft_labels=args.soft_labels,
        source={**data.source_info, "num_train_rows": int(len(data.labels())), "train_fingerprint": data.fingerprint()},
        distillation=args.to_dict(),
    )
    ledger = estimate_storage(config)
    if ledger.total_scalars > plan.budget_scalars:
        raise BudgetError(
            f"This representation needs {ledger.total_scalars:,} scalars but ipc_budget {args.ipc_budget} allows "
            f"{plan.budget_scalars:,}:\n{ledger}\nLower lpc / z_dim / decoder width, or raise ipc_budget."
        )
    return config


def expert_settings(args: DistillArguments) -> ExpertSettings:
    return ExpertSettings(
        num_experts=args.num_experts,
        epochs=max(args.expert_epochs_total, args.max_start_epoch + args.expert_epochs),
        keep_epochs=args.max_start_epoch + args.expert_epochs,
        lr=args.expert_lr,
        batch_size=args.expert_batch_size,
        depth=args.student_depth,
        width=args.student_width,
        dtype=args.expert_dtype,
        seed=args.seed,
    )


def _check_run_dir(args: DistillArguments) -> bool:
    """True when ``output_dir`` holds a matching run to resume; refuses a different one."""
    path = os.path.join(args.output_dir, RUN_FILE)
    if not os.path.exists(path):
        return False
    with open(path) as f:
        previous = json.load(f)
    if previous != args.run_identity():
        changed = sorted(k for k in set(previous) | set(args.run_identity())
                         if previous.get(k) != args.run_identity().get(k))
        raise RunConflictError(
            f"{args.output_dir} holds a run with different settings ({', '.join(changed)}). "
            "Use another output_dir, or delete it to start over."
        )
    return True


def run_distillation(args: DistillArguments, accelerator=None, show_progress: bool = True) -> tuple[D3Model, dict]:
    """Distil, save the artifact to ``OUTPUT_DIR/artifact``, evaluate it; returns (model, summary)."""
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    autocast = accelerator.autocast if accelerator is not None else None
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = load_data(args)
    config = build_config(args, data)
    resuming = _check_run_dir(args)
    os.makedirs(args.output_dir, exist_ok=True)
    atomic_write_json(os.path.join(args.output_dir, RUN_FILE), args.run_identity())
    logger.info("Representation for ipc_budget %s:\n%s", args.ipc_budget, estimate_storage(config))

    t = time.perf_counter()
    buffer_dir = args.buffer_dir or os.path.join(args.output_dir, "experts")
    buffer = build_expert_buffer(data, expert_settings(args), buffer_dir, device=device, show_progress=show_progress)
    timings["experts_s"] = time.perf_counter() - t

    torch.manual_seed(args.seed)
    model = D3Model(config)
    distiller = Distiller(model, data, buffer, args, device=device, autocast=autocast)
    if resuming and distiller.load_checkpoint(args.output_dir):
        logger.info("Resuming from %s at iteration %d", args.output_dir, distiller.iteration)
    t = time.perf_counter()
    start_iteration = distiller.iteration
    distiller.run(args.iterations, checkpoint_dir=args.output_dir, show_progress=show_progress)
    done = distiller.iteration - start_iteration
    timings["distill_s"] = time.perf_counter() - t
    timings["s_per_iteration"] = timings["distill_s"] / done if done else None

    model = distiller.model.cpu().eval()
    if config.soft_labels:
        _fit_soft_labels(model, buffer, data)
    artifact_dir = os.path.join(args.output_dir, ARTIFACT_DIR)
    summary: dict = {"ledger": model.storage().to_dict(), "timings": timings,
                     "expert_buffer_bytes": buffer.size_on_disk()}
    evaluation = None
    if args.eval_epochs > 0 and data.test is not None:
        from .evaluation import Protocol, evaluate, fixed_source, model_source, random_real_images

        t = time.perf_counter()
        protocol = Protocol(epochs=args.eval_epochs, num_per_class=args.eval_num_per_class)
        d3 = evaluate(lambda s: model_source(model, protocol.num_per_class, s), data, protocol, args.eval_seeds,
                      show_progress=show_progress)
        ipc = max(1, int(round(args.ipc_budget)))
        real = evaluate(lambda s: fixed_source(*random_real_images(data, ipc, s)), data, protocol, args.eval_seeds,
                        show_progress=show_progress)
        real["method"] = f"random real, {ipc} image(s) per class"
        d3["method"] = "d3hf artifact"
        timings["evaluate_s"] = time.perf_counter() - t
        evaluation = {"results": [d3, real], "protocol_text": protocol.describe(), "ipc_budget": args.ipc_budget}
        summary["evaluation"] = evaluation
    with atomic_directory(artifact_dir) as tmp:
        if evaluation is not None:
            atomic_write_json(os.path.join(tmp, "eval.json"), evaluation)
        model.save_pretrained(tmp)
    timings["total_s"] = time.perf_counter() - t0
    atomic_write_json(os.path.join(args.output_dir, "summary.json"), summary)
    return model, summary


@torch.no_grad()
def _fit_soft_labels(model: D3Model, buffer, data: ImageClassificationData) -> None:
    """Soft labels: the final expert's softmax on each prior's mean image."""
    from .experts import expert_network

    teacher = expert_network(buffer, data)
    images, _ = model.mean_images()
    mean, std = data.normalization_tensors()
    model.soft_labels.copy_(teacher((images - mean) / std).softmax(-1))
