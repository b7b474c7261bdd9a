"""The ``d3hf`` command line: ``distill``, ``evaluate``, ``info``, ``aggregate``, ``push``, ``generate``.

User errors (``D3HFError``) end with one line on stderr and exit code 2; ``--debug`` shows the
traceback. Heavy libraries load inside the commands, so ``d3hf --help`` answers at once.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import sys
from typing import Sequence

from .. import __version__
from ..distill.config import DistillArguments, field_type
from ..errors import ConfigError, D3HFError


def _setup_logging(debug: bool = False) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("d3hf")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False


RECIPE_HINT = "recipes/digits/quick.yaml"


def distill_parser():
    """``d3hf distill``'s parser: every DistillArguments field as a flag, with its help."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        DistillArguments, prog="d3hf distill",
        description="Distil a dataset into Gaussian latent priors and decoders (D3), evaluate the result and save "
                    "the artifact. Settings come from CONFIG.yaml; flags override them.",
        epilog=f"Example: d3hf distill {RECIPE_HINT} --output_dir outputs/quick. Under accelerate: accelerate launch "
               "[--config_file recipes/accelerate_configs/X.yaml] -m d3hf distill CONFIG.yaml",
    )
    parser.add_argument("config", nargs="?", metavar="CONFIG.yaml", help="recipe with the run's settings")
    return parser


def read_recipe(path: str) -> dict:
    """A recipe's settings; a missing file, bad YAML or unknown key is a ``ConfigError``."""
    import yaml

    if not os.path.isfile(path):
        raise ConfigError(f"Config file {path!r} does not exist.")
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values.")
    known = {f for f in DistillArguments.__dataclass_fields__}
    unknown = sorted(set(values) - known)
    if unknown:
        hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, known, n=1)) else k
                 for k in unknown]
        raise ConfigError(f"Unknown config key(s) in {path}: {', '.join(hints)}. "
                          "`d3hf distill --help` lists every key.")
    return values


def parse_distill_args(argv: Sequence[str]) -> DistillArguments:
    """``[CONFIG.yaml] [--key value ...]``: YAML values, overridden by the command line.
    Every setting is checked (``DistillArguments.__post_init__``) before anything runs."""
    argv = list(argv)
    values = read_recipe(argv.pop(0)) if argv and not argv[0].startswith("-") else {}
    parser = distill_parser()
    parser.set_defaults(**{k: _as_field_value(k, v) for k, v in values.items()})
    # argparse ends a bad flag with its usage and one error line (SystemExit 2, main's return code).
    args, rest = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    if rest.config is not None:  # a recipe after the flags would be read as nothing at all
        raise ConfigError(f"Give the recipe first: d3hf distill {rest.config} [--key value ...].")
    return args


def _as_field_value(key: str, value):
    """YAML reads `no`/`yes` as booleans and numbers as numbers; string keys get strings back."""
    kind = field_type(key)
    if kind in (int, float) and isinstance(value, str):  # argparse would parse it as a flag's text
        raise ConfigError(f"Config key {key!r} must be of type {kind.__name__}; got {value!r}.")
    if kind is not str or value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _recipes_here() -> list[str]:
    import glob

    return sorted(glob.glob(os.path.join("recipes", "*", "*.yaml")))


def cmd_distill(argv: Sequence[str]) -> int:
    if not argv:  # the defaults are a long run: ask for a recipe rather than start it unasked
        d = DistillArguments()
        recipes = _recipes_here()
        sys.stderr.write(
            "usage: d3hf distill CONFIG.yaml [--key value ...]   (d3hf distill --help lists every key)\n\n"
            f"With no recipe, d3hf distill would distil {d.dataset} at ipc_budget {d.ipc_budget:g}: {d.num_experts} "
            f"experts of {d.expert_epochs_total} epochs, a {d.init_steps}-step warm start, {d.iterations} matching "
            f"iterations and a {d.eval_epochs}-epoch evaluation, into {d.output_dir}. Name a recipe to run.\n"
            + (f"Recipes here: {', '.join(recipes)}\n" if recipes else "")
            + f"A first taste (about a minute on a 2-core CPU): d3hf distill {RECIPE_HINT}\n")
        return 2
    args = parse_distill_args(argv)
    from ..distill.distributed import make_accelerator
    from ..distill.runner import run_distillation

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


# The settings that say which data a run read: all that evaluate needs of an artifact's record.
DATA_KEYS = ("dataset", "dataset_config", "dataset_revision", "image_column", "label_column", "train_split",
             "test_split", "test_size", "validation_size", "seed")


def cmd_evaluate(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="d3hf evaluate", description="Train fresh networks on an artifact's samples "
                                "(or a fixed image set) and test them on the real test split.")
    p.add_argument("model", nargs="?", help="artifact folder or Hub id")
    p.add_argument("--images", help="evaluate a fixed image set instead: .npz with images (N,C,H,W) and labels")
    p.add_argument("--dataset", default=None, help="defaults to the dataset recorded in the artifact")
    p.add_argument("--arch", default="convnet", choices=["convnet", "resnet", "mlp"],
                   help="network trained: ConvNet-3, ResNet-18 (both instance norm) or an MLP")
    p.add_argument("--augment", default="none", choices=["none", "dsa"], help="none: P-noaug; dsa: P-dsa")
    p.add_argument("--epochs", type=int, default=None, help="default: the protocol's (300, or 1000 with dsa)")
    p.add_argument("--seeds", type=int, default=3, help="networks trained, one per seed (mean and std reported)")
    p.add_argument("--num_per_class", "--num-per-class", type=int, default=20, help="fresh samples per class per epoch")
    p.add_argument("--with_prior_means", "--with-prior-means", action="store_true",
                   help="also train on every prior's mean image each epoch")
    p.add_argument("--allow_unverified_test", "--allow-unverified-test", action="store_true",
                   help="evaluate even when the test split cannot be shown disjoint from the distillation rows")
    p.add_argument("--device", default=None, help="where the networks train, e.g. cpu or cuda:0; default: "
                   "cuda when available")
    a = p.parse_args(list(argv))
    if a.model is None and a.images is None:
        raise ConfigError("Give an artifact (MODEL) or --images FILE.npz to evaluate.")
    if a.model is not None and a.images is not None:
        raise ConfigError("Give either an artifact (MODEL) or --images FILE.npz, not both.")
    for flag, value in (("--epochs", a.epochs), ("--seeds", a.seeds), ("--num_per_class", a.num_per_class)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1; got {value}.")
    device = _device(a.device)
    from ..data.provenance import check_test_split_disjoint
    from ..distill.runner import load_data
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
        data = load_data(DistillArguments(dataset=a.dataset or record.get("source") or "mnist5k"))
        make_source, method = (lambda s: fixed_source(images.images, images.labels)), f"images {a.images}"
    else:
        from ..hub.load import load_artifact

        model = load_artifact(a.model)
        # Test on the dataset, columns and split recorded in the artifact unless told otherwise.
        recorded = {k: v for k, v in model.config.distillation.items() if k in DATA_KEYS}
        data = load_data(DistillArguments(**{**recorded, "dataset": a.dataset or recorded.get("dataset", "mnist5k")}))
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
        from ..hub.cards import write_card_and_samples
        from ..utils.io import atomic_write_json

        evaluation = _with_result(earlier, result, recorded_dataset=model.config.source.get("source"))
        atomic_write_json(eval_path, evaluation)
        write_card_and_samples(model, a.model, evaluation)
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


def _device(name: str | None):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"--device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1): {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asks for CUDA, but torch sees no GPU here; use --device cpu.")
    return device


def cmd_info(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="d3hf info", description="Print an artifact's shape and storage ledger.")
    p.add_argument("model", help="artifact folder or Hub repo id")
    p.add_argument("--revision", default=None, help="Hub revision of MODEL")
    a = p.parse_args(list(argv))
    from ..hub.load import load_artifact

    model = load_artifact(a.model, a.revision)
    sys.stdout.write(json.dumps({"classes": model.config.num_classes, "image_shape": model.config.image_shape,
                                 "priors_per_class": model.config.priors_per_class, "z_dim": model.config.z_dim,
                                 "decoders": len(model.decoders)}, indent=2) + "\n")
    sys.stdout.write(str(model.storage()) + "\n")
    return 0


def cmd_push(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="d3hf push", description="Upload an artifact folder to a Hub model repo, "
                                "and optionally a synthetic dataset sampled from it to a dataset repo. Only the "
                                "artifact's own files are uploaded; the folder is not changed.")
    p.add_argument("model_dir", help="artifact folder (OUTPUT_DIR/artifact of d3hf distill)")
    p.add_argument("--repo_id", "--repo-id", required=True, help="model repo, NAMESPACE/NAME")
    p.add_argument("--private", action="store_true", help="create new repos as private")
    p.add_argument("--revision", default=None, help="model repo branch (created if missing); default main")
    p.add_argument("--dataset_repo", "--dataset-repo", default=None, help="also push samples to this dataset repo")
    p.add_argument("--num_per_class", "--num-per-class", type=int, default=None,
                   help="samples per class pushed to --dataset_repo")
    p.add_argument("--seed", type=int, default=0, help="seed of the pushed samples")
    p.add_argument("--config_name", "--config-name", default="default", help="dataset config name")
    a = p.parse_args(list(argv))
    if a.dataset_repo and (a.num_per_class is None or a.num_per_class < 1):
        raise ConfigError("--dataset_repo needs --num_per_class K (K >= 1).")
    from ..hub.load import load_artifact
    from ..hub.push import push_artifact, push_synthetic_dataset

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
    from ..hub.generate import GENERATE_FORMATS, generate_dataset

    p = argparse.ArgumentParser(prog="d3hf generate", description="Write samples of an artifact to a new folder.")
    p.add_argument("model", help="artifact folder or Hub repo id")
    p.add_argument("--num_per_class", "--num-per-class", type=int, required=True, help="samples per class")
    p.add_argument("--seed", type=int, default=0, help="same seed, same samples")
    p.add_argument("--output", "--output_dir", "--output-dir", required=True,
                   help="new or empty folder to write; an earlier d3hf output only with --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUTPUT when it holds earlier d3hf samples and nothing else")
    p.add_argument("--format", choices=GENERATE_FORMATS, default="arrow", help="arrow (save_to_disk), parquet or "
                   "imagefolder")
    p.add_argument("--revision", default=None, help="Hub revision of MODEL")
    a = p.parse_args(list(argv))
    if a.num_per_class < 1:
        raise ConfigError(f"--num_per_class must be at least 1; got {a.num_per_class}.")
    dataset = generate_dataset(a.model, a.output, num_per_class=a.num_per_class, seed=a.seed, format=a.format,
                               revision=a.revision, overwrite=a.overwrite)
    sys.stdout.write(f"wrote {len(dataset)} samples ({a.num_per_class} per class, seed {a.seed}) "
                     f"to {a.output} as {a.format}\n")
    return 0


def cmd_aggregate(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="d3hf aggregate", description="Merge subtasks distilled separately "
                                "(d3hf distill --subtask_ids ...) into one artifact.")
    p.add_argument("dirs", nargs="+", help="run output folders, or subtask artifact folders")
    p.add_argument("--output_dir", "--output-dir", required=True,
                   help="new or empty folder for the merged artifact; an earlier d3hf artifact only with --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUTPUT_DIR when it holds an earlier d3hf artifact and nothing else")
    a = p.parse_args(list(argv))
    from ..utils.outputs import check_output, output_folder

    check_output(a.output_dir, "artifact", overwrite=a.overwrite, inputs=a.dirs)  # before any work
    from ..distill.aggregation import aggregate_directories
    from ..hub.cards import save_artifact

    model = aggregate_directories(a.dirs)
    with output_folder(a.output_dir, "artifact", overwrite=a.overwrite, inputs=a.dirs) as tmp:
        save_artifact(model, tmp)
    ledger = model.storage()
    sys.stdout.write(f"artifact: {a.output_dir} ({model.config.num_classes} classes, {len(model.decoders)} subtasks; "
                     f"{ledger.total_scalars:,} scalars = {ledger.ipc_equivalent:.3f} IPC-equivalent)\n")
    return 0


COMMANDS = {
    "distill": (cmd_distill, "distil a dataset into priors and decoders, evaluate and save the artifact"),
    "evaluate": (cmd_evaluate, "train fresh networks on an artifact's samples and test them on real data"),
    "info": (cmd_info, "print an artifact's shape and storage ledger"),
    "aggregate": (cmd_aggregate, "merge subtasks distilled separately into one artifact"),
    "push": (cmd_push, "upload an artifact (and optionally samples from it) to the Hugging Face Hub"),
    "generate": (cmd_generate, "write samples of an artifact to a folder (arrow, parquet or imagefolder)"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: d3hf COMMAND [ARGS ...] [--debug]    (d3hf COMMAND --help for a command's arguments)", "",
             "Distributional Dataset Distillation (D3) for the Hugging Face ecosystem.", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "options:", "  -h, --help     show this message", "  --version      print d3hf's version",
              "  --debug        show the traceback of an error", "",
              f"A first run (about a minute on a 2-core CPU): d3hf distill {RECIPE_HINT}"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if argv and argv[0] in ("-h", "--help"):
        sys.stdout.write(_usage())
        return 0
    if argv and argv[0] in ("-V", "--version"):
        sys.stdout.write(f"d3hf {__version__}\n")
        return 0
    if not argv or argv[0] not in COMMANDS:
        close = difflib.get_close_matches(argv[0], COMMANDS, n=1) if argv else []
        hint = f"d3hf: unknown command {argv[0]!r}" + (f"; did you mean {close[0]!r}?" if close else "") + "\n\n" \
            if argv else ""
        sys.stderr.write(hint + _usage())
        return 2
    _setup_logging(debug)
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..utils.allocator import keep_freed_memory

    keep_freed_memory()  # this process is ours: no page faults for every large tensor (d3hf.allocator)
    command = argv[0]
    try:
        with logging_redirect_tqdm(loggers=[logging.getLogger("d3hf")]):  # log lines above the bars, not on them
            return COMMANDS[command][0](argv[1:])
    except SystemExit as err:  # argparse's --help (0) and usage errors (2), as a return code
        return err.code if isinstance(err.code, int) else 2
    except KeyboardInterrupt:
        if debug:
            raise
        again = (" Run the same command again to resume from the last checkpoint." if command == "distill" else "")
        sys.stderr.write(f"\nd3hf {command}: interrupted.{again}\n")
        return 130
    except (D3HFError, OSError) as err:  # anything else is a bug: its traceback shows
        if debug:
            raise
        sys.stderr.write(f"d3hf {command}: error: {err}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
