"""The ``d3hf`` command line: ``distill``, ``evaluate``, ``info``, ``aggregate``, ``push``, ``generate``.

User errors end with one line on stderr and exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import types
import typing
from typing import Sequence

import yaml

from .allocator import keep_freed_memory
from .arguments import DistillArguments


def _setup_logging(debug: bool = False) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("d3hf")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False


def parse_distill_args(argv: Sequence[str]) -> DistillArguments:
    """``[CONFIG.yaml] [--key value ...]``: YAML values, overridden by the command line."""
    from transformers import HfArgumentParser

    argv = list(argv)
    values: dict = {}
    if argv and not argv[0].startswith("-"):
        path = argv.pop(0)
        if not os.path.exists(path):
            raise ValueError(f"Config file {path!r} does not exist.")
        with open(path) as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a mapping of keys to values.")
    known = {f for f in DistillArguments.__dataclass_fields__}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown config key(s) {unknown}. Known keys: {', '.join(sorted(known))}.")
    parser = HfArgumentParser(DistillArguments)
    parser.set_defaults(**{k: _as_field_value(k, v) for k, v in values.items()})
    try:
        (args,) = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    except SystemExit as err:
        if err.code == 0:  # --help: argparse printed it, and that is a success
            raise
        raise ValueError("Invalid command-line arguments for distill (see the message above).") from err
    _check_arguments(args)
    return args


def _field_type(name: str) -> type:
    """A DistillArguments field's type, ``Optional[X]`` read as ``X`` (annotations are strings
    under ``from __future__ import annotations``, so they are resolved here)."""
    hint = typing.get_type_hints(DistillArguments)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _as_field_value(key: str, value):
    """YAML reads `no`/`yes` as booleans and numbers as numbers; string keys get strings back."""
    if _field_type(key) is not str or value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _check_arguments(args: DistillArguments) -> None:
    for name, f in DistillArguments.__dataclass_fields__.items():
        value = getattr(args, name)
        kind = _field_type(name)
        expected = {int: int, float: (int, float), bool: bool, str: str}.get(kind)
        if expected is not None and value is not None and not isinstance(value, expected):
            raise ValueError(f"Config key {name!r} must be of type {kind.__name__}; got {value!r}.")
        if expected is int and isinstance(value, bool):
            raise ValueError(f"Config key {name!r} must be an integer; got {value!r}.")
        choices = f.metadata.get("choices")
        if choices and value not in choices:  # YAML values bypass argparse's own check
            raise ValueError(f"Config key {name!r} must be one of {choices}; got {value!r}.")
    switches = ("auto", "true", "false", "yes", "no", "on", "off", "1", "0")
    if str(args.checkpoint_steps).lower() not in switches:
        raise ValueError(f"Config key 'checkpoint_steps' must be auto, true or false; got {args.checkpoint_steps!r}.")
    if not 0 <= args.min_start_epoch < args.max_start_epoch:
        raise ValueError(f"Need 0 <= min_start_epoch < max_start_epoch; got {args.min_start_epoch} and "
                         f"{args.max_start_epoch}.")


def cmd_distill(argv: Sequence[str]) -> int:
    args = parse_distill_args(argv)
    from .distributed import make_accelerator
    from .pipeline import run_distillation

    accelerator = make_accelerator(args.cpu, args.mixed_precision, args.num_threads)
    try:
        model, summary = run_distillation(args, accelerator=accelerator, show_progress=accelerator.is_main_process)
    finally:
        accelerator.end_training()  # leaves the process group cleanly, also after an error
    if model is None:
        if accelerator.is_main_process:
            done = ", ".join(str(s["index"]) for s in summary["subtasks"])
            sys.stdout.write(f"subtasks {done} distilled under {summary['output_dir']}; merge with d3hf aggregate\n")
        return 0
    ledger = summary["ledger"]
    lines = [f"artifact: {summary['artifact_dir']}",
             f"storage: {ledger['total_scalars']:,} scalars = {ledger['ipc_equivalent']:.3f} IPC-equivalent "
             f"(budget {args.ipc_budget})"]
    for r in summary.get("evaluation", {}).get("results", []):
        lines.append(f"{r['method']}: {r['split']} accuracy {100 * r['mean']:.2f} % ({r['notes']}, "
                     f"{r['seeds']} seed(s))")
    lines.append("timings: " + ", ".join(f"{k} {v:.1f}" for k, v in summary["timings"].items() if v is not None))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def cmd_evaluate(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="d3hf evaluate", description="Train fresh networks on an artifact's samples "
                                "(or a fixed image set) and test them on the real test split.")
    p.add_argument("model", nargs="?", help="artifact folder or Hub id")
    p.add_argument("--images", help="evaluate a fixed image set instead: .npz with images (N,C,H,W) and labels")
    p.add_argument("--dataset", default=None, help="defaults to the dataset recorded in the artifact")
    p.add_argument("--arch", default="convnet", choices=["convnet", "resnet", "mlp"])
    p.add_argument("--augment", default="none", choices=["none", "dsa"], help="none: P-noaug; dsa: P-dsa")
    p.add_argument("--epochs", type=int, default=None, help="default: the protocol's (300, or 1000 with dsa)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--num_per_class", "--num-per-class", type=int, default=20, help="fresh samples per class per epoch")
    p.add_argument("--with_prior_means", "--with-prior-means", action="store_true",
                   help="also train on every prior's mean image each epoch")
    p.add_argument("--allow_unverified_test", "--allow-unverified-test", action="store_true",
                   help="evaluate even when the test split cannot be shown disjoint from the distillation rows")
    p.add_argument("--device", default=None, help="where the networks train, e.g. cpu or cuda:0; default: "
                   "cuda when available")
    a = p.parse_args(list(argv))
    if a.model is None and a.images is None:
        raise ValueError("Give an artifact (MODEL) or --images FILE.npz to evaluate.")
    if a.model is not None and a.images is not None:
        raise ValueError("Give either an artifact (MODEL) or --images FILE.npz, not both.")
    if a.epochs is not None and a.epochs < 1:
        raise ValueError(f"--epochs must be at least 1; got {a.epochs}.")
    device = _device(a.device)
    import dataclasses

    from .data import DataError
    from .environment import measured_where
    from .evaluation import check_test_split_disjoint, evaluate, fixed_source, model_source, named_protocol
    from .pipeline import load_data

    overrides = {"arch": a.arch, "num_per_class": a.num_per_class, **({"epochs": a.epochs} if a.epochs is not None else {})}
    protocol = named_protocol("P-dsa" if a.augment == "dsa" else "P-noaug", **overrides)
    if a.images:
        from .baselines import image_set_source, load_image_set

        images = load_image_set(a.images)
        record = image_set_source(a.images)
        if record is None and not a.allow_unverified_test:
            raise DataError(
                f"{a.images} does not record the train rows its images came from, so its test split cannot be "
                "shown disjoint from them. Save image sets with d3hf.baselines.save_image_set(path, images, data), "
                "or pass --allow_unverified_test.")
        record = record or {}
        # Test on the dataset the file records unless told otherwise.
        data = load_data(DistillArguments(dataset=a.dataset or record.get("source") or "mnist5k"))
        make_source, method = (lambda s: fixed_source(images.images, images.labels)), f"images {a.images}"
    else:
        from .modeling_d3 import D3Model

        model = D3Model.from_pretrained(a.model)
        # Test on the dataset, columns and split recorded in the artifact unless told otherwise.
        recorded = {k: v for k, v in model.config.distillation.items() if k in DistillArguments.__dataclass_fields__}
        data = load_data(dataclasses.replace(DistillArguments(**recorded),
                                             dataset=a.dataset or recorded.get("dataset", "mnist5k")))
        record = model.config.source
        make_source = lambda s: model_source(model, a.num_per_class, s, with_means=a.with_prior_means)  # noqa: E731
        method = "d3hf artifact" + (" (samples + prior means)" if a.with_prior_means else "")
    verified = check_test_split_disjoint(record, data, allow_unverified=a.allow_unverified_test)
    eval_path = os.path.join(a.model, "eval.json") if a.model and os.path.isdir(a.model) else None
    earlier = _read_evaluation(eval_path) if eval_path else None  # a broken file stops us before training
    result = evaluate(make_source, data, protocol, a.seeds, device=device, show_progress=True)
    result.update(method=method, dataset=data.source_info.get("source"), test_split_check=verified)
    sys.stdout.write("| method | protocol | arch | split | accuracy (final epoch) | seeds |\n"
                     "|---|---|---|---|---:|---:|\n"
                     f"| {method} | {protocol.name} | {a.arch} | {result['split']} | {100 * result['mean']:.2f} +- "
                     f"{100 * result['std']:.2f} % | {a.seeds} |\n\n{result['notes']}; {verified}; measured on "
                     f"{measured_where(result)}\n")
    if eval_path:
        from .io_utils import atomic_write_json
        from .model_card import write_card_and_samples

        atomic_write_json(eval_path, _with_result(earlier, result, recorded_dataset=model.config.source.get("source")))
        write_card_and_samples(model, a.model)
    return 0


def _read_evaluation(path: str) -> dict:
    """The artifact's evaluation file (empty if there is none yet)."""
    from .data import DataError

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


def _device(name: str | None):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1): {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asks for CUDA, but torch sees no GPU here; use --device cpu.")
    return device


def cmd_info(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="d3hf info")
    p.add_argument("model")
    a = p.parse_args(list(argv))
    from .modeling_d3 import D3Model

    model = D3Model.from_pretrained(a.model)
    sys.stdout.write(json.dumps({"classes": model.config.num_classes, "image_shape": model.config.image_shape,
                                 "priors_per_class": model.config.priors_per_class, "z_dim": model.config.z_dim,
                                 "decoders": len(model.decoders)}, indent=2) + "\n")
    sys.stdout.write(str(model.storage()) + "\n")
    return 0


def cmd_push(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="d3hf push", description="Upload an artifact folder to a Hub model repo, "
                                "and optionally a synthetic dataset sampled from it to a dataset repo.")
    p.add_argument("model_dir", help="artifact folder (OUTPUT_DIR/artifact of d3hf distill)")
    p.add_argument("--repo_id", "--repo-id", required=True, help="model repo, NAMESPACE/NAME")
    p.add_argument("--private", action="store_true", help="create new repos as private")
    p.add_argument("--revision", default=None, help="model repo branch (created if missing); default main")
    p.add_argument("--dataset_repo", "--dataset-repo", default=None, help="also push samples to this dataset repo")
    p.add_argument("--num_per_class", "--num-per-class", type=int, default=None, help="samples per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config_name", "--config-name", default="default", help="dataset config name")
    a = p.parse_args(list(argv))
    if a.dataset_repo and (a.num_per_class is None or a.num_per_class < 1):
        raise ValueError("--dataset_repo needs --num_per_class K (K >= 1).")
    from .hub import load_artifact, push_artifact, push_synthetic_dataset

    pushed = push_artifact(a.model_dir, a.repo_id, private=a.private, revision=a.revision)
    lines = [f"model: {pushed.repo_id} at {pushed.revision} commit {pushed.commit}"]
    if a.dataset_repo:
        data = push_synthetic_dataset(load_artifact(a.model_dir), a.dataset_repo, num_per_class=a.num_per_class,
                                      seed=a.seed, config_name=a.config_name, private=a.private,
                                      generator=a.repo_id, generator_revision=pushed.commit)
        lines.append(f"dataset: {data.repo_id} config {a.config_name!r} commit {data.commit} "
                     f"({a.num_per_class} per class, seed {a.seed})")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def cmd_generate(argv: Sequence[str]) -> int:
    from .hub import GENERATE_FORMATS, generate_dataset

    p = argparse.ArgumentParser(prog="d3hf generate", description="Write samples of an artifact to a folder.")
    p.add_argument("model", help="artifact folder or Hub repo id")
    p.add_argument("--num_per_class", "--num-per-class", type=int, required=True, help="samples per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", "--output_dir", "--output-dir", required=True, help="folder to write (replaced)")
    p.add_argument("--format", choices=GENERATE_FORMATS, default="arrow")
    p.add_argument("--revision", default=None, help="Hub revision of MODEL")
    a = p.parse_args(list(argv))
    dataset = generate_dataset(a.model, a.output, num_per_class=a.num_per_class, seed=a.seed, format=a.format,
                               revision=a.revision)
    sys.stdout.write(f"wrote {len(dataset)} samples ({a.num_per_class} per class, seed {a.seed}) "
                     f"to {a.output} as {a.format}\n")
    return 0


def cmd_aggregate(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="d3hf aggregate", description="Merge subtasks distilled separately "
                                "(d3hf distill --subtask_ids ...) into one artifact.")
    p.add_argument("dirs", nargs="+", help="run output folders, or subtask artifact folders")
    p.add_argument("--output_dir", "--output-dir", required=True, help="folder for the merged artifact (replaced)")
    a = p.parse_args(list(argv))
    from .aggregation import aggregate_directories
    from .io_utils import atomic_directory

    model = aggregate_directories(a.dirs)
    with atomic_directory(a.output_dir) as tmp:
        model.save_pretrained(tmp)
    ledger = model.storage()
    sys.stdout.write(f"artifact: {a.output_dir} ({model.config.num_classes} classes, {len(model.decoders)} subtasks; "
                     f"{ledger.total_scalars:,} scalars = {ledger.ipc_equivalent:.3f} IPC-equivalent)\n")
    return 0


COMMANDS = {"distill": cmd_distill, "evaluate": cmd_evaluate, "info": cmd_info, "aggregate": cmd_aggregate,
            "push": cmd_push, "generate": cmd_generate}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        sys.stderr.write(f"usage: d3hf {{{','.join(COMMANDS)}}} ... [--debug]\n")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    _setup_logging(debug)
    keep_freed_memory()  # this process is ours: no page faults for every large tensor (d3hf.allocator)
    from .budget import BudgetError
    from .data import DataError
    from .engine import NonFiniteError
    from .pipeline import RunConflictError

    try:
        return COMMANDS[argv[0]](argv[1:])
    except SystemExit as err:  # argparse's --help (0) and usage errors (2), as a return code
        return err.code if isinstance(err.code, int) else 2
    except (DataError, BudgetError, RunConflictError, NonFiniteError, ValueError, OSError) as err:
        if debug:
            raise
        sys.stderr.write(f"d3hf {argv[0]}: error: {err}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
