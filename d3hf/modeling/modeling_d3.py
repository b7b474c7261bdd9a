"""The D3 artifact: Gaussian latent priors per class plus one decoder per subtask."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

from ..utils.seeding import class_seed
from .configuration_d3 import D3Config
from .decoders import build_decoder
from .storage import StorageLedger, ledger_from_tensors


class D3Model(PreTrainedModel):
    """A distilled dataset: ``num_classes * priors_per_class`` diagonal Gaussian priors in a
    ``z_dim`` latent space and one decoder per subtask, each decoding its own classes' priors.

    Priors are stored class by class: prior ``p`` belongs to class ``p // priors_per_class``.
    Images come out in the original pixel space scaled to [0, 1].
    """

    config_class = D3Config
    base_model_prefix = "d3"
    main_input_name = "latents"
    _no_split_modules = ["Decoder"]

    def __init__(self, config: D3Config):
        super().__init__(config)
        config.validate()
        shape = (config.num_priors, config.z_dim)
        self.prior_means = nn.Parameter(torch.empty(shape))
        self.prior_logvars = nn.Parameter(torch.empty(shape))
        self.decoders = nn.ModuleList(build_decoder(spec) for spec in config.decoder_specs())
        if config.soft_labels:
            self.soft_labels = nn.Parameter(torch.empty(config.num_priors, config.num_classes))
        else:
            self.soft_labels = None
        decoder_of_class = [0] * config.num_classes
        for d, classes in enumerate(config.subtasks):
            for c in classes:
                decoder_of_class[c] = d
        self._decoder_of_class = decoder_of_class
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Only the root owns bare parameters; decoders keep PyTorch's default layer init.
        if module is self:
            with torch.no_grad():
                if not self.prior_means.is_meta:
                    self.prior_means.normal_()
                    self.prior_logvars.normal_()
                    if self.soft_labels is not None:
                        self.soft_labels.fill_(1.0 / self.config.num_classes)

    _saves_on_any_rank = False  # set inside ``saving_on_this_rank()``

    def should_save_on_this_rank(self, is_main_process: bool) -> bool:
        """transformers' rule (in a process group only rank 0 writes), except inside
        ``saving_on_this_rank()``."""
        if self._saves_on_any_rank:
            return is_main_process
        return super().should_save_on_this_rank(is_main_process)

    @contextlib.contextmanager
    def saving_on_this_rank(self) -> Iterator["D3Model"]:
        """``save_pretrained`` in this block writes from this process whatever its rank: a subtask's
        artifact is saved by the process that distilled it (by transformers' rule every rank but
        0 of a process group would silently write nothing)."""
        self._saves_on_any_rank = True
        try:
            yield self
        finally:
            self._saves_on_any_rank = False

    # ------------------------------------------------------------------ structure

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def prior_labels(self) -> torch.Tensor:
        """Global class id of every prior (derived from the config, not stored)."""
        lpc = self.config.priors_per_class
        return torch.arange(self.config.num_classes, device=self.prior_means.device).repeat_interleave(lpc)

    @property
    def prior_decoders(self) -> torch.Tensor:
        """Decoder index of every prior."""
        return torch.tensor(self._decoder_of_class, device=self.prior_means.device).repeat_interleave(
            self.config.priors_per_class
        )

    def priors_of_class(self, class_id: int) -> range:
        lpc = self.config.priors_per_class
        return range(class_id * lpc, (class_id + 1) * lpc)

    # ------------------------------------------------------------------ generation

    def decode(self, latents: torch.Tensor, prior_ids: torch.Tensor) -> torch.Tensor:
        """Decode ``latents`` (N, z_dim), row i with the decoder of prior ``prior_ids[i]``."""
        decoder_ids = self.prior_decoders[prior_ids.to(self.prior_means.device)]
        c, h, w = self.config.image_shape
        if len(self.decoders) == 1:
            return self.decoders[0](latents)
        out = latents.new_empty((latents.shape[0], c, h, w))
        for d, decoder in enumerate(self.decoders):
            rows = (decoder_ids == d).nonzero(as_tuple=True)[0]
            if rows.numel():
                out = out.index_copy(0, rows, decoder(latents[rows]))
        return out

    def reparameterize(self, prior_ids: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """z = mu + exp(logvar / 2) * noise for each row's prior (differentiable)."""
        mu = self.prior_means[prior_ids]
        return mu + torch.exp(0.5 * self.prior_logvars[prior_ids]) * noise

    def forward(self, prior_ids: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Images for ``prior_ids``: decoded prior samples (or the prior means if noise is None)."""
        latents = self.prior_means[prior_ids] if noise is None else self.reparameterize(prior_ids, noise)
        return self.decode(latents, prior_ids)

    def draw(self, num_per_class: int, seed: int, classes=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prior ids and unit Gaussian noise for ``num_per_class`` samples of each class.

        Each prior of class c gets ``num_per_class // priors_per_class`` samples (sample j uses
        prior ``j % priors_per_class``) and the remaining ``num_per_class % priors_per_class``
        go to distinct priors drawn from a generator seeded by (seed, c), as does the noise: a
        class's samples do not depend on the other classes requested, the noise is the same on
        every device, and over fresh seeds (an evaluation's epochs) every prior is drawn equally
        often, not the first ones more.
        """
        classes = range(self.config.num_classes) if classes is None else classes
        lpc, z = self.config.priors_per_class, self.config.z_dim
        ids, noise = [], []
        for c in classes:
            c = int(c)
            if not 0 <= c < self.config.num_classes:
                raise ValueError(f"class id {c} is out of range 0..{self.config.num_classes - 1}")
            gen = torch.Generator().manual_seed(class_seed(seed, c))
            noise.append(torch.randn(num_per_class, z, generator=gen))
            whole, rest = divmod(num_per_class, lpc)
            within = torch.cat([torch.arange(whole * lpc) % lpc, torch.randperm(lpc, generator=gen)[:rest]])
            ids.append(c * lpc + within)
        if not ids:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, z)
        return torch.cat(ids), torch.cat(noise)

    @torch.no_grad()
    def sample(
        self,
        num_per_class: int,
        seed: int = 0,
        classes=None,
        soft_labels: bool = False,
        batch_size: int = 4096,
    ):
        """``num_per_class`` fresh samples of each class: ``(images, labels)`` or, with
        ``soft_labels=True``, ``(images, labels, soft_labels)``.

        Images are float (N, C, H, W) in [0, 1]; labels are global class ids. Same seed, same
        output; samples are spread evenly over each class's priors (see ``draw``).
        """
        if soft_labels and self.soft_labels is None:
            raise ValueError("This artifact was distilled without soft labels (config.soft_labels is False).")
        prior_ids, noise = self.draw(num_per_class, seed, classes)
        images = self.decode_priors(prior_ids, noise, batch_size)
        labels = self.prior_labels.cpu()[prior_ids]
        if soft_labels:
            return images, labels, self.soft_labels.detach().float().cpu()[prior_ids]
        return images, labels

    @torch.no_grad()
    def mean_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each prior's mean decoded: ``(images, labels)``, one image per prior."""
        prior_ids = torch.arange(self.config.num_priors)
        return self.decode_priors(prior_ids, None, 4096), self.prior_labels.cpu()

    @torch.no_grad()
    def decode_priors(self, prior_ids: torch.Tensor, noise: torch.Tensor | None = None,
                      batch_size: int = 4096) -> torch.Tensor:
        """Images (float, CPU) for ``prior_ids`` with the given unit noise (None: the prior means),
        decoded ``batch_size`` rows at a time without gradients."""
        device, dtype = self.prior_means.device, self.prior_means.dtype
        chunks = []
        for start in range(0, len(prior_ids), batch_size):
            ids = prior_ids[start : start + batch_size].to(device)
            eps = None if noise is None else noise[start : start + batch_size].to(device, dtype)
            chunks.append(self(ids, eps).float().cpu())
        if not chunks:
            return torch.zeros(0, *self.config.image_shape)
        return torch.cat(chunks)

    # ------------------------------------------------------------------ accounting & saving

    def storage(self) -> StorageLedger:
        """Every stored tensor, grouped: each decoder, the means, the log-variances, soft labels."""
        return ledger_from_tensors(self.state_dict(), self.config.num_classes, self.config.image_shape)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """``PreTrainedModel.from_pretrained`` for untrusted artifacts: runs no code from the
        artifact (``trust_remote_code`` and ``auto_map`` are ignored), and raises
        ``ArtifactError`` naming the problem when the config, the tensor names, shapes or dtypes,
        or the values are inconsistent, before anything is built from them."""
        from transformers.utils import cached_file

        from .validation import (
            ArtifactError,
            check_config,
            check_soft_labels,
            check_values,
            check_weights_file,
        )

        path = pretrained_model_name_or_path
        kwargs.pop("trust_remote_code", None)
        hub = {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only", "force_download",
                                      "subfolder") if k in kwargs}
        config = kwargs.get("config")
        if not isinstance(config, D3Config):
            try:
                config = D3Config.from_pretrained(path, **hub)
            except (ValueError, TypeError, KeyError) as err:  # not OSError: a missing repo or file keeps its error
                raise ArtifactError(f"{path}: unreadable config.json ({err})") from None
        check_config(config)
        check_weights_file(cached_file(path, "model.safetensors", **hub), config)
        kwargs["config"] = config
        loaded = super().from_pretrained(path, *model_args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        check_values(model.state_dict(), str(path))
        check_soft_labels(model.soft_labels, str(path))
        return loaded


# Auto classes resolve "model_type": "d3" once this module is imported (d3hf imports it when
# transformers is loaded first, and whenever a d3hf model class is used).
AutoConfig.register("d3", D3Config, exist_ok=True)
AutoModel.register(D3Config, D3Model, exist_ok=True)
