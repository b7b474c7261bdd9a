"""``d3hf distill CONFIG.yaml [--key value ...]``: settings from a recipe, overridden by flags."""

from __future__ import annotations

import json
import os
import sys
from typing import Sequence

from ..distill.config import SECTION_OF_KEY, SECTIONS, DistillArguments, defaults, did_you_mean, field_type
from ..errors import ConfigError
from .parsing import command_parser, parse

RECIPE_HINT = "recipes/digits/quick.yaml"


def distill_parser():
    """``d3hf distill``'s parser: every settings section's fields as flags, with their help."""
    parser = command_parser(
        "d3hf distill",
        "Distil a dataset into Gaussian latent priors and decoders (D3), evaluate the result and save the "
        "artifact. Settings come from CONFIG.yaml; flags override them.",
        *SECTIONS.values(),
        epilog=f"Example: d3hf distill {RECIPE_HINT} --output_dir outputs/quick. Under accelerate: accelerate launch "
               "[--config_file recipes/accelerate_configs/X.yaml] -m d3hf distill CONFIG.yaml",
    )
    parser.add_argument("config", nargs="?", metavar="CONFIG.yaml", help="recipe with the run's settings")
    return parser


def read_recipe(path: str) -> dict:
    """A recipe's settings (flat keys); a missing file, bad YAML or unknown key is a ``ConfigError``."""
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
    unknown = sorted(set(values) - set(SECTION_OF_KEY))
    if unknown:
        raise ConfigError(f"Unknown config key(s) in {path}: {', '.join(did_you_mean(k) for k in unknown)}. "
                          "`d3hf distill --help` lists every key.")
    return values


def parse_distill_args(argv: Sequence[str]) -> DistillArguments:
    """``[CONFIG.yaml] [--key value ...]``: YAML values, overridden by the command line.
    Every setting is checked (each section, then ``DistillArguments``) before anything runs."""
    argv = list(argv)
    values = read_recipe(argv.pop(0)) if argv and not argv[0].startswith("-") else {}
    parser = distill_parser()
    parser.set_defaults(**{k: _as_field_value(k, v) for k, v in values.items()})
    *sections, rest = parse(parser, argv)
    if rest.config is not None:  # a recipe after the flags would be read as nothing at all
        raise ConfigError(f"Give the recipe first: d3hf distill {rest.config} [--key value ...].")
    return DistillArguments(*sections)


def _as_field_value(key: str, value):
    """YAML reads `no`/`yes` as booleans and numbers as numbers; string keys get strings back."""
    kind = field_type(key)
    if kind in (int, float) and isinstance(value, str):  # argparse would parse it as a flag's text
        raise ConfigError(f"Config key {key!r} must be of type {kind.__name__}; got {value!r}.")
    if kind is not str or value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):  # a decoder spec or a partition, written as YAML structure
        return json.dumps(value)
    return str(value)


def _recipes_here() -> list[str]:
    import glob

    return sorted(p for p in glob.glob(os.path.join("recipes", "*", "*.yaml")) if "accelerate_configs" not in p)


def cmd_distill(argv: Sequence[str]) -> int:
    if not argv:  # the defaults are a long run: ask for a recipe rather than start it unasked
        d = defaults()
        recipes = _recipes_here()
        sys.stderr.write(
            "usage: d3hf distill CONFIG.yaml [--key value ...]   (d3hf distill --help lists every key)\n\n"
            f"With no recipe, d3hf distill would distil {d['dataset']} at ipc_budget {d['ipc_budget']:g}: "
            f"{d['num_experts']} experts of {d['expert_epochs_total']} epochs, a {d['init_steps']}-step warm start, "
            f"{d['iterations']} matching iterations and a {d['eval_epochs']}-epoch evaluation, into {d['output_dir']}. "
            "Name a recipe to run.\n"
            + (f"Recipes here: {', '.join(recipes)}\n" if recipes else "")
            + f"A first taste (about a minute on a 2-core CPU): d3hf distill {RECIPE_HINT}\n")
        return 2
    args = parse_distill_args(argv)
    from ..distill.distributed import make_accelerator
    from ..distill.runner import run_distillation

    # Service trackers (W&B, Trackio, ...) are accelerate's; TensorBoard files are d3hf's own, one
    # folder per subtask, so that every process can write its subtasks' (d3hf.distill.tracking).
    services = [name for name in args.run.trackers() if name != "tensorboard"]
    accelerator = make_accelerator(args.run.cpu, args.run.mixed_precision, args.run.num_threads, log_with=services,
                                   project_dir=args.run.output_dir.replace("{process_index}", "0"),
                                   timeout_seconds=args.run.ddp_timeout)
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
             f"(budget {args.representation.ipc_budget})"]
    for r in summary.get("evaluation", {}).get("results", []):
        lines.append(f"{r['method']}: {r['split']} accuracy {100 * r['mean']:.2f} % ({r['notes']}, "
                     f"{r['seeds']} seed(s))")
    lines.append("timings: " + ", ".join(f"{k} {v:.1f}" for k, v in summary["timings"].items() if v is not None))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
