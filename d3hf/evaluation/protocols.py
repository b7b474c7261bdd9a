"""Named downstream protocols: how a fresh classifier is trained and tested."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

# What a fixed image set (random real images, a coreset, DM images) is said to train on.
FIXED_SET_TRAINING = "a fixed image set, the same images every epoch"


@dataclass
class Protocol:
    """How a downstream network is trained and tested. The defaults are P-noaug: ConvNet-3
    width 128 (instance norm), SGD 0.01 m0.9 wd 5e-4, batch 256, lr x0.1 at half, 300 epochs,
    no augmentation, 20 fresh samples per class per epoch. ``augment="dsa"`` applies DSA to
    every batch (see ``d3hf.augment``); ``named_protocol`` gives P-noaug and P-dsa."""

    name: str = "P-noaug"
    arch: str = "convnet"
    depth: int = 3
    width: int = 128
    epochs: int = 300
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    num_per_class: int = 20
    augment: str = "none"

    def describe(self, fixed_set: bool = False) -> str:
        """The protocol in one line, with what is trained on: ``num_per_class`` fresh samples per
        class per epoch from a distributional artifact, or (``fixed_set``) one image set's images."""
        training_data = FIXED_SET_TRAINING if fixed_set else (
            f"{self.num_per_class} fresh samples per class per epoch from a distributional artifact")
        augment = self.augment
        if augment == "dsa":
            augment = "DSA (one of colour, crop, cutout, scale, rotate per batch, per-image parameters, no flips)"
        network = ("mlp, two hidden layers" if self.arch == "mlp"
                   else f"{self.arch}-{self.depth} width {self.width}, instance norm")
        return (f"{self.name}: {network}, SGD lr {self.lr} momentum {self.momentum} "
                f"wd {self.weight_decay}, batch {self.batch_size}, lr x0.1 at epoch {self.epochs // 2}, "
                f"{self.epochs} epochs, {training_data}, augmentation {augment}, final-epoch accuracy")


_NAMED_PROTOCOLS = {
    "P-noaug": {},
    "P-dsa": {"epochs": 1000, "augment": "dsa"},
}
# Fields that pick the network rather than the training recipe: changing them keeps the name.
_NETWORK_FIELDS = ("arch", "depth", "width")


def named_protocol(name: str, **overrides) -> Protocol:
    """``"P-noaug"`` (the headline protocol) or ``"P-dsa"`` (1,000 epochs with DSA).

    ``overrides`` replace fields, e.g. ``arch="resnet"`` for a cross-architecture row. A change
    to the training recipe (epochs, lr, augmentation, ...) is written into the name, so a
    result never carries a protocol name it was not trained under; such a name is read back
    (``"P-noaug[epochs=100,num_per_class=50]"``), ``overrides`` applied after its own.
    """
    name, in_name = _split_name(name)
    overrides = {**in_name, **overrides}
    protocol = Protocol(name=name, **_NAMED_PROTOCOLS[name])
    changed = {k: v for k, v in overrides.items() if getattr(protocol, k) != v}
    recipe = {k: v for k, v in changed.items() if k not in _NETWORK_FIELDS}
    if recipe:
        changed["name"] = name + "[" + ",".join(f"{k}={v}" for k, v in sorted(recipe.items())) + "]"
    return replace(protocol, **changed)


def _split_name(name: str) -> tuple[str, dict]:
    """``"P-noaug[epochs=100]"`` -> ``("P-noaug", {"epochs": 100})``, each value of its field's type."""
    base, bracket, rest = name.partition("[")
    if base not in _NAMED_PROTOCOLS or (bracket and not rest.endswith("]")):
        raise ValueError(f"unknown protocol {name!r}; use one of {', '.join(_NAMED_PROTOCOLS)}, optionally "
                         f"with changed fields, e.g. P-noaug[epochs=100,num_per_class=50]")
    settable = [f.name for f in fields(Protocol) if f.name != "name"]
    overrides = {}
    for item in filter(None, rest[:-1].split(",")) if bracket else ():
        key, _, value = item.partition("=")
        if key not in settable or not value:
            raise ValueError(f"protocol {name!r}: {item!r} is not FIELD=VALUE with FIELD one of {', '.join(settable)}")
        kind = type(getattr(Protocol(), key))
        try:
            overrides[key] = kind(value)
        except ValueError:
            raise ValueError(f"protocol {name!r}: {key} needs a {kind.__name__}, got {value!r}") from None
    return base, overrides


def named_protocols() -> dict[str, Protocol]:
    """Every named protocol, freshly built: ``{"P-noaug": ..., "P-dsa": ...}``."""
    return {name: named_protocol(name) for name in _NAMED_PROTOCOLS}
