"""``d3hf evaluate``: train fresh networks on an artifact's samples (or an image set), test on real data."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..distill.config import DataArguments
from ..errors import ConfigError
from .parsing import command_parser, parse, resolve_device


@dataclass
class EvaluateOptions:
    images: Optional[str] = field(default=None, metadata={
        "help": "evaluate a fixed image set instead: .npz with images (N,C,H,W) and labels"})
    dataset: Optional[str] = field(default=None, metadata={"help": "defaults to the dataset recorded in the artifact"})
    arch: str = field(default="convnet", metadata={
        "choices": ["convnet", "resnet", "mlp"], "help": "network trained: ConvNet-3, ResNet-18 (both instance norm) "
        "or an MLP"})
    augment: str = field(default="none", metadata={"choices": ["none", "dsa"], "help": "none: P-noaug; dsa: P-dsa"})
    epochs: Optional[int] = field(default=None, metadata={"help": "default: the protocol's (300, or 1000 with dsa)"})
    seeds: int = field(default=3, metadata={"help": "networks trained, one per seed (mean and std reported)"})
    num_per_class: int = field(default=20, metadata={"help": "fresh samples per class per epoch"})
    with_prior_means: bool = field(default=False, metadata={"help": "also train on every prior's mean image each epoch"})
    allow_unverified_test: bool = field(default=False, metadata={
        "help": "evaluate even when the test split cannot be shown disjoint from the distillation rows"})
    device: Optional[str] = field(default=None, metadata={
        "help": "where the networks train, e.g. cpu or cuda:0; default: cuda when available"})


def cmd_evaluate(argv: Sequence[str]) -> int:
    p = command_parser("d3hf evaluate", "Train fresh networks on an artifact's samples (or a fixed image set) and "
                       "test them on the real test split.", EvaluateOptions)
    p.add_argument("model", nargs="?", help="artifact folder or Hub id")
    a, positional = parse(p, argv)
    model_path = positional.model
    if model_path is None and a.images is None:
        raise ConfigError("Give an artifact (MODEL) or --images FILE.npz to evaluate.")
    if model_path is not None and a.images is not None:
        raise ConfigError("Give either an artifact (MODEL) or --images FILE.npz, not both.")
    for flag, value in (("--epochs", a.epochs), ("--seeds", a.seeds), ("--num_per_class", a.num_per_class)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1; got {value}.")
    device = resolve_device(a.device)
    from ..data.provenance import check_test_split_disjoint
    from ..distill.runner import load_data, load_recorded_data
    from ..errors import DataError
    from ..evaluation.protocols import named_protocol
    from ..evaluation.training import evaluate, fixed_source, model_source
    from ..utils.environment import measured_where

    overrides = {"arch": a.arch, "num_per_class": a.num_per_class, **({"epochs": a.epochs} if a.epochs is not None else {})}
    protocol = named_protocol("P-dsa" if a.augment == "dsa" else "P-noaug", **overrides)
    if a.images:
        from ..evaluation.image_sets import image_set_source, load_image_set

        images = load_image_set(a.images)
        record = image_set_source(a.images)
        if record is None and not a.allow_unverified_test:
            raise DataError(
                f"{a.images} does not record the train rows its images came from, so its test split cannot be "
                "shown disjoint from them. Save image sets with d3hf.evaluation.image_sets.save_image_set(path, images, data), "
                "or pass --allow_unverified_test.")
        record = record or {}
        # Test on the dataset the file records unless told otherwise.
        data = load_data(DataArguments(dataset=a.dataset or record.get("source") or "mnist5k"), seed=0)
        make_source, method = (lambda s: fixed_source(images.images, images.labels)), f"images {a.images}"
    else:
        from ..hub.load import load_artifact

        model = load_artifact(model_path).to(device)  # samples are decoded where the networks train
        # Test on the dataset, columns and split recorded in the artifact unless told otherwise.
        recorded = model.config.distillation
        data = load_recorded_data(recorded, a.dataset or recorded.get("dataset", "mnist5k"))
        record = model.config.source
        make_source = lambda s: model_source(model, a.num_per_class, s, with_means=a.with_prior_means)  # noqa: E731
        method = "d3hf artifact" + (" (samples + prior means)" if a.with_prior_means else "")
    verified = check_test_split_disjoint(record, data, allow_unverified=a.allow_unverified_test)
    eval_path = os.path.join(model_path, "eval.json") if model_path and os.path.isdir(model_path) else None
    earlier = _read_evaluation(eval_path) if eval_path else None  # a broken file stops us before training
    result = evaluate(make_source, data, protocol, a.seeds, device=device, show_progress=True)
    result.update(method=method, dataset=data.source_info.get("source"), test_split_check=verified)
    sys.stdout.write("| method | protocol | arch | split | accuracy (final epoch) | seeds |\n"
                     "|---|---|---|---|---:|---:|\n"
                     f"| {method} | {protocol.name} | {a.arch} | {result['split']} | {100 * result['mean']:.2f} +- "
                     f"{100 * result['std']:.2f} % | {a.seeds} |\n\n{result['notes']}; {verified}; measured on "
                     f"{measured_where(result)}\n")
    if eval_path:
        from ..hub.cards import write_card_and_samples
        from ..utils.io import atomic_write_json

        evaluation = _with_result(earlier, result, recorded_dataset=model.config.source.get("source"))
        atomic_write_json(eval_path, evaluation)
        write_card_and_samples(model, model_path, evaluation)
    return 0


def _read_evaluation(path: str) -> dict:
    """The artifact's evaluation file (empty if there is none yet)."""
    from ..errors import DataError

    if not os.path.exists(path):
        return {"results": []}
    try:
        with open(path) as f:
            evaluation = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path} cannot be read ({err}); move it away or fix it, then evaluate again.") from None
    if not isinstance(evaluation, dict) or not isinstance(evaluation.get("results", []), list):
        raise DataError(f"{path} is not an evaluation file (an object with a 'results' list); move it away.")
    return evaluation


def _with_result(evaluation: dict, result: dict, recorded_dataset: str | None) -> dict:
    """``evaluation`` with ``result`` added: it replaces an earlier result of the same method,
    protocol, architecture, split and dataset, and every other result (distill's random-real row,
    other protocols) stays. Rows written before results named their split and dataset were on
    the test split of the artifact's recorded dataset."""
    def key(r: dict) -> tuple:
        return (r.get("method"), r.get("protocol"), r.get("arch"), r.get("split", "test"),
                r.get("dataset", recorded_dataset))

    evaluation = dict(evaluation)
    evaluation["results"] = [r for r in evaluation.get("results", []) if key(r) != key(result)] + [result]
    evaluation.pop("protocol_text", None)
    if len({json.dumps(r.get("settings"), sort_keys=True) for r in evaluation["results"]}) == 1:
        evaluation["protocol_text"] = result["notes"]  # one protocol: said once; else each row's notes say it
    return evaluation
