"""What a grid covers: the methods (D3, its ablations and the baselines), the named modes (the
full grid, --quick, --smoke) and the cells a mode defines."""

from __future__ import annotations

import dataclasses
import os

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # benchmarks/
REPO = os.path.dirname(HERE)
# D3 and its ablations: settings laid over the dataset's recipe. "half-decoder" halves the
# recipe's decoder width and lets the priors per class fill the budget it frees (skipped where the
# width is already 1). "lpc1" stores one prior per class and the widest decoder that fits the rest,
# even where the recipe fixes the width; where the next width does not fit (MNIST-5k) the row is
# fewer modes at less storage (its ledger says how much).
D3_VARIANTS = {
    "d3": {},
    "d3-random-init": {"init": "random"},
    "d3-vae-only": {"iterations": 0},
    "d3-mtt-only": {"mmd_weight": 0.0},
    "d3-mmd-only": {"mtt_weight": 0.0},
    "d3-both-terms": {},  # the recipe with the MMD term it dropped (MMD_WHEN_DROPPED); elsewhere the recipe itself
    "d3-lpc1": {"lpc": "1", "decoder": "auto"},
    "d3-half-decoder": {"decoder": "half", "lpc": "auto"},  # the halved budget goes to priors
}
# Where a recipe's validation split dropped the MMD term (`mmd_weight: 0`), the rows that keep it
# (MMD only, both terms) run it at the weight it was chosen at before: the recipe's history, so that
# those rows still measure what the recipe left out (Fashion-MNIST ipc10 ran it at 10). Written as the
# recipe wrote it (YAML's 10, not 10.0): digests hash the parsed values, and the records scored
# before the recipe dropped the term carry the recipe's 10.
MMD_WHEN_DROPPED = {"mmd_weight": 10}
MMD_ROWS = ("d3-mmd-only", "d3-both-terms")
# The rows that vary the matching phase: none of them exists for a recipe without one.
MATCHING_ROWS = ("d3-random-init", "d3-mtt-only", "d3-mmd-only", "d3-both-terms", "d3-prototypes")
# Learned prototype images under D3's own MTT + MMD objective (same experts and settings as the
# recipe): the "distributional vs prototype images at equal storage" ablation. Pixels take Adam
# steps of this size, chosen per dataset on its validation split at ipc 1 (P-noaug, 1 seed;
# `python benchmarks/prototype_lr.py`, benchmarks/VALIDATION.md): digits 0.001 82.6 %, 0.01
# 84.7 %, 0.1 81.3 %; MNIST-5k 0.01 59.0 %, 0.03 63.75 %, 0.1 66.5 %, 0.3 66.5 %.
PROTOTYPE_LR = {"digits": 0.01, "mnist5k": 0.1}
FULL_IPC = 1  # the ipc_budget the all-real upper bound's cells are recorded under
# Fashion-MNIST's rows: D3, the ablations the matching research needs, and the baselines (the
# prototype, lpc1 and half-decoder ablations are measured on MNIST-5k). Its ablations are scored
# under P-dsa too, the protocol its published table uses. Its all-real bound trains on 60,000
# images per epoch: FULL_EPOCHS epochs instead of the protocol's 300 or 1,000, ConvNet only.
DATASET_METHODS = {"fashion_mnist": ("d3", "d3-random-init", "d3-vae-only", "d3-mtt-only", "d3-mmd-only",
                                     "d3-both-terms", "random", "herding", "kcenter", "dm", "full")}
ABLATION_PROTOCOLS = {"fashion_mnist": ("P-noaug", "P-dsa")}
FULL_EPOCHS = {"fashion_mnist": 20}
FULL_ARCHS = {"fashion_mnist": ("convnet",)}
ABLATIONS = (*[m for m in D3_VARIANTS if m != "d3"], "d3-prototypes")
METHODS = (*D3_VARIANTS, "d3-prototypes", "random", "herding", "kcenter", "dm", "peer", "full")
METHOD_NAMES = {"d3": "d3hf (D3)", "d3-random-init": "D3, random init (the reference's start)",
                "d3-vae-only": "D3 warm start only (VAE fit, no MTT/MMD)", "d3-mtt-only": "D3, MTT term only",
                "d3-mmd-only": "D3, MMD term only", "d3-both-terms": "D3, both terms (MTT + MMD)",
                "d3-lpc1": "D3, 1 prior per class (decoder as large as fits)",
                "d3-half-decoder": "D3, half-width decoder + more priors",
                "d3-prototypes": "prototype images, D3's MTT + MMD objective", "random": "random real",
                "herding": "herding", "kcenter": "k-center", "dm": "DM (in-project)", "peer": "DM (external images)",
                "full": "all real train images"}


@dataclasses.dataclass
class Mode:
    """What a run of the grid covers, and how long each piece trains."""

    name: str
    datasets: tuple[str, ...] = ("fashion_mnist", "mnist5k", "digits")
    ipcs: tuple[int, ...] = (1, 10)
    methods: tuple[str, ...] = METHODS
    seeds: int = 3
    protocols: tuple[str, ...] = ("P-noaug", "P-dsa")
    archs: tuple[str, ...] = ("convnet", "resnet")
    d3_overrides: dict = dataclasses.field(default_factory=dict)
    dm_iterations: int = 100
    eval_epochs: int | None = None  # None: the protocol's own
    feature_epochs: int = 10  # of the network herding and k-center select in
    only_seeds: tuple[int, ...] | None = None  # of range(seeds): to split a run over parallel streams
    out: str = HERE

    @property
    def folder_name(self) -> str:
        return "grid" if self.name == "full" else f"grid-{self.name}"

    @property
    def cache(self) -> str:
        """Builds and expert buffers: large, re-creatable, not tracked."""
        return os.path.join(self.out, "cache", self.folder_name)

    @property
    def cells_dir(self) -> str:
        """One JSON record per scored cell: small, tracked, what the report is made from."""
        return os.path.join(self.out, "results", self.folder_name)

    @property
    def scoring_dir(self) -> str:
        """Checkpoints of downstream trainings in progress, one folder per cell; beside the records
        so that one of a cell too long for a session can be carried over in git (force-added)."""
        return os.path.join(self.cells_dir, "scoring")

    @property
    def peer_dir(self) -> str:
        """The external DM image sets ("peer" rows): beside the checkout the grid writes into (as
        ``out``), not the one its code runs from, so a run from a worktree defines the same cells."""
        return os.path.normpath(os.path.join(self.out, "..", "..", "shared", "peer-baselines"))

    @property
    def report(self) -> str:
        return os.path.join(self.out, "RESULTS.md" if self.name == "full" else f"RESULTS-{self.name}.md")

    def protocol(self, name: str, arch: str, dataset: str | None = None, method: str | None = None):
        """The downstream protocol its cells under ``name`` and ``arch`` train with (of ``method``
        on ``dataset``: the all-real bound may train fewer epochs, FULL_EPOCHS)."""
        from d3hf.evaluation.protocols import named_protocol

        overrides = {"arch": arch} if self.eval_epochs is None else {"arch": arch, "epochs": self.eval_epochs}
        if method == "full" and dataset in FULL_EPOCHS and self.eval_epochs is None:
            overrides["epochs"] = FULL_EPOCHS[dataset]
        return named_protocol(name, **overrides)


QUICK = Mode(name="quick", datasets=("digits",), methods=("d3", "d3-random-init", "d3-vae-only", "d3-mtt-only",
                                                           "d3-mmd-only", "d3-prototypes", "random", "herding",
                                                           "kcenter", "dm"), seeds=1,
             protocols=("P-noaug",), archs=("convnet",), d3_overrides={"iterations": 100, "num_experts": 5},
             dm_iterations=50, eval_epochs=100)
# For the test suite: every code path of the grid in seconds.
SMOKE = Mode(name="smoke", datasets=("digits",), ipcs=(10,),
             methods=("d3", "d3-mmd-only", "d3-prototypes", "random", "herding", "dm"),
             seeds=1,
             protocols=("P-noaug",), archs=("convnet",), dm_iterations=2, eval_epochs=2, feature_epochs=1,
             d3_overrides={"iterations": 2, "num_experts": 1, "expert_epochs_total": 3, "max_start_epoch": 1,
                           "expert_epochs": 1, "syn_steps": 2, "student_width": 8, "decoder": "2", "num_threads": 0,
                           "init_steps": 20})


BASE_MODES = {"full": Mode(name="full"), "quick": QUICK, "smoke": SMOKE}


def cell_name(dataset: str, ipc: int, method: str, seed: int, protocol: str, arch: str) -> str:
    return f"{dataset}_ipc{ipc}_{method}_seed{seed}_{protocol}_{arch}"


def cells(mode: Mode):
    """The cells ``mode`` defines, as (dataset, ipc_budget, method, seed, protocol, arch) keys."""
    for dataset in mode.datasets:
        for ipc in mode.ipcs:
            for method in mode.methods:
                if method not in DATASET_METHODS.get(dataset, METHODS):
                    continue
                if method == "peer" and not os.path.exists(os.path.join(mode.peer_dir, f"dm_{dataset}_ipc{ipc}.npz")):
                    continue
                # The upper bound does not depend on the budget: scored once per dataset, whichever
                # budgets this run covers, and recorded under FULL_IPC.
                if method == "full" and ipc != mode.ipcs[0]:
                    continue
                key_ipc = FULL_IPC if method == "full" else ipc
                seeds = 1 if method in ("peer", "full") else mode.seeds
                # Ablations run under the first protocol and architecture only (P-noaug, ConvNet), or
                # under the dataset's ABLATION_PROTOCOLS; the all-real bound under FULL_ARCHS.
                ablation = method in ABLATIONS
                protocols = mode.protocols
                if ablation:
                    protocols = [p for p in mode.protocols if p in ABLATION_PROTOCOLS.get(dataset, mode.protocols[:1])]
                archs = mode.archs[:1] if ablation else mode.archs
                if method == "full":
                    archs = [a for a in archs if a in FULL_ARCHS.get(dataset, archs)]
                for seed in range(seeds):
                    if mode.only_seeds is not None and seed not in mode.only_seeds:
                        continue
                    for protocol in protocols:
                        for arch in archs:
                            yield dataset, key_ipc, method, seed, protocol, arch
