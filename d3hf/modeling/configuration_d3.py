"""Configuration of a D3 artifact: plain data, no tensors."""

from __future__ import annotations

from transformers import PreTrainedConfig

from ..errors import ArtifactError
from ..utils.ranges import range_problems
from .decoders import DecoderSpec


class D3Config(PreTrainedConfig):
    """Everything needed to rebuild a distilled D3 dataset's tensors, and where they came from.

    Args:
        class_names: name of each global class id.
        image_shape: (C, H, W) of the images the decoders produce.
        z_dim: size of each latent prior.
        priors_per_class: Gaussian priors per class ("lpc"); priors are stored class by class.
        decoders: one ``DecoderSpec`` dict per subtask.
        subtasks: for each decoder, the global class ids it decodes.
        normalization_mean / normalization_std: per-channel statistics of the real train split
            in [0, 1] pixel units, to normalise generated images exactly like real ones.
        soft_labels: whether each prior carries a stored soft label (counted in the ledger).
        source: the dataset, split and rows the artifact was distilled from.
        distillation: the settings of the run that produced it.
    """

    model_type = "d3"

    def __init__(
        self,
        class_names: list[str] | None = None,
        image_shape: list[int] | None = None,
        z_dim: int = 16,
        priors_per_class: int = 1,
        decoders: list[dict] | None = None,
        subtasks: list[list[int]] | None = None,
        normalization_mean: list[float] | None = None,
        normalization_std: list[float] | None = None,
        soft_labels: bool = False,
        source: dict | None = None,
        distillation: dict | None = None,
        **kwargs,
    ):
        self.class_names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(10)]
        self.image_shape = _ints("image_shape", image_shape or [1, 28, 28])
        self.z_dim = _ints("z_dim", [z_dim])[0]
        self.priors_per_class = _ints("priors_per_class", [priors_per_class])[0]
        num_classes = len(self.class_names)
        self.subtasks = [_ints("subtasks", s) for s in subtasks] if subtasks else [list(range(num_classes))]
        if decoders is None:
            from .decoders import family_spec

            decoders = [family_spec(self.image_shape, self.z_dim, 8).to_dict() for _ in self.subtasks]
        self.decoders = [d.to_dict() if isinstance(d, DecoderSpec) else dict(d) for d in decoders]
        channels = self.image_shape[0]
        self.normalization_mean = list(normalization_mean) if normalization_mean else [0.5] * channels
        self.normalization_std = list(normalization_std) if normalization_std else [0.5] * channels
        self.soft_labels = bool(soft_labels)
        self.source = dict(source or {})
        self.distillation = dict(distillation or {})
        super().__init__(**kwargs)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_priors(self) -> int:
        return self.num_classes * self.priors_per_class

    def decoder_specs(self) -> list[DecoderSpec]:
        return [DecoderSpec.from_dict(d) for d in self.decoders]

    def validate(self) -> None:
        """Raise ``ValueError`` when the fields contradict each other."""
        k = self.num_classes
        if k < 1 or self.priors_per_class < 1 or self.z_dim < 1:
            raise ArtifactError("class_names, priors_per_class and z_dim must all be non-empty / positive")
        if len(self.image_shape) != 3 or min(self.image_shape) < 1 or self.image_shape[0] not in (1, 3):
            raise ArtifactError(f"image_shape must be (C, H, W) with C in (1, 3); got {self.image_shape}")
        problems = range_problems((c for s in self.subtasks for c in s), k)
        if problems:
            raise ArtifactError(f"subtasks must cover every class id 0..{k - 1} exactly once ({problems}); "
                                f"got {self.subtasks}")
        if len(self.decoders) != len(self.subtasks):
            raise ArtifactError(f"{len(self.subtasks)} subtasks need as many decoders; got {len(self.decoders)}")
        for spec in self.decoder_specs():
            if spec.z_dim != self.z_dim or list(spec.out_shape) != list(self.image_shape):
                raise ArtifactError("every decoder must take z_dim latents and produce image_shape images")
        if len(self.normalization_mean) != self.image_shape[0] or len(self.normalization_std) != self.image_shape[0]:
            raise ArtifactError("normalization_mean / normalization_std need one value per channel")


def _ints(name: str, values) -> list[int]:
    """``values`` as ints; a config field of another type is a clear error, not a crash later."""
    try:
        if any(isinstance(v, bool) or float(v) != int(v) for v in values):
            raise ArtifactError
        return [int(v) for v in values]
    except (TypeError, ValueError):
        raise ArtifactError(f"D3Config: {name} must hold integers; got {values!r}") from None
