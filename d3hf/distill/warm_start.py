"""Warm start: fit a task's decoder and priors to its real rows before distilling.

The reference starts from N(0, 1) priors and a random decoder, so a short run spends most of
its iterations learning to draw the data at all. ``init: vae`` instead trains the task's
decoder as the decoder of a small VAE on the task's train rows (the encoder is thrown away
and never stored), then sets each class's ``lpc`` priors to Gaussians moment-matched to
clusters of that class's posteriors. MTT and MMD then refine images that already look like
the data. Train rows only; the artifact's format and storage are unchanged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.image_data import ImageClassificationData
from ..modeling.modeling_d3 import D3Model

logger = logging.getLogger(__name__)

MIN_LOGVAR = -9.0


@dataclass
class WarmStartSettings:
    steps: int = 3000
    rows_per_class: int = 500
    batch_size: int = 64
    lr: float = 2e-3
    kl_weight: float | None = None  # None: kl_weight_for(image_shape)
    seed: int = 0


def kl_weight_for(image_shape) -> float:
    """0.25 on 28x28x1, scaled down with the pixel count (the reconstruction term is a sum over
    pixels, so a fixed weight lets the KL win on small images and every latent decodes to one
    average image). Chosen on a validation split of MNIST-5k at ipc_budget 10 (warm start only,
    100-epoch P-noaug: weight 1 91.3 %, 0.5 92.3 %, 0.25 93.3 %, 0.1 92.8 %) and digits (1:
    66.0 %, 0.1 and 0.02: 86.1 %)."""
    c, h, w = image_shape
    return 0.25 * min(1.0, c * h * w / 784)


class _Encoder(nn.Module):
    """Strided 3x3 convs down to at most 4x4, then a linear map to (mean, log-variance)."""

    def __init__(self, image_shape, z_dim: int, width: int = 32):
        super().__init__()
        c, h, w = image_shape
        layers: list[nn.Module] = []
        while min(h, w) > 4:
            layers += [nn.Conv2d(c, width, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c, h, w = width, (h + 1) // 2, (w + 1) // 2
            width = min(2 * width, 128)
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.LeakyReLU(0.2), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width * h * w, 2 * z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.head(self.body(x)).chunk(2, dim=1)
        return mean, logvar.clamp(min=MIN_LOGVAR)


def warm_start(model: D3Model, data: ImageClassificationData, settings: WarmStartSettings,
               show_progress: bool = False) -> dict:
    """Fit ``model`` (one decoder; classes local to ``data``) to ``data``'s train rows in place.

    Returns the final reconstruction and KL terms (per image) and the seconds taken.
    """
    if len(model.decoders) != 1:
        raise ValueError("warm_start fits one task (one decoder); call it per subtask")
    from ..utils.progress import bar as progress_bar

    t0 = time.perf_counter()
    device = model.prior_means.device
    rng = np.random.default_rng(settings.seed)
    rows = [np.sort(rng.choice(r, size=min(len(r), settings.rows_per_class), replace=False)) for r in data.class_rows]
    # Row ids only: each batch is read (from the decoded copy when the run keeps one) as it is
    # needed, so memory does not grow with classes x rows_per_class.
    row_ids = np.concatenate(rows)
    labels = torch.cat([torch.full((len(r),), c, dtype=torch.long) for c, r in enumerate(rows)])
    decoder = model.decoders[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        encoder = _Encoder(data.image_shape, model.config.z_dim).to(device)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.Adam(list(encoder.parameters()) + list(decoder.parameters()), lr=settings.lr)
    kl_weight = settings.kl_weight if settings.kl_weight is not None else kl_weight_for(data.image_shape)
    batch_size = min(settings.batch_size, len(row_ids))
    steps_per_epoch = len(row_ids) // batch_size
    bar = progress_bar("warm start", total=settings.steps, disable=not show_progress)
    recon = kl = torch.zeros(())
    for step in range(settings.steps):
        if step % steps_per_epoch == 0:
            order = torch.randperm(len(row_ids), generator=generator)
        at = (step % steps_per_epoch) * batch_size
        batch = data.images(row_ids[order[at : at + batch_size].numpy()], device=device)
        mean, logvar = encoder(batch)
        noise = torch.randn(mean.shape, generator=generator).to(device)
        out = decoder(mean + torch.exp(0.5 * logvar) * noise).clamp(1e-6, 1 - 1e-6)
        recon = F.binary_cross_entropy(out, batch, reduction="sum") / len(batch)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum() / len(batch)
        optimizer.zero_grad(set_to_none=True)
        (recon + kl_weight * kl).backward()
        optimizer.step()
        bar.update(1)
        if step % 100 == 0:
            bar.set_postfix(recon=f"{recon.item():.1f}", kl=f"{kl.item():.1f}")
    bar.close()
    with torch.no_grad():
        means, logvars = zip(*(encoder(data.images(row_ids[i : i + 512], device=device))
                               for i in range(0, len(row_ids), 512)))
        _set_priors(model, torch.cat(means).cpu(), torch.cat(logvars).cpu(), labels, generator)
    stats = {"warm_start_s": time.perf_counter() - t0, "warm_start_recon": recon.item(), "warm_start_kl": kl.item()}
    logger.info("Warm start (VAE, %d rows, %d steps): reconstruction %.1f, KL %.1f per image, %.1f s",
                len(row_ids), settings.steps, stats["warm_start_recon"], stats["warm_start_kl"], stats["warm_start_s"])
    return stats


def _set_priors(model: D3Model, means: torch.Tensor, logvars: torch.Tensor, labels: torch.Tensor,
                generator: torch.Generator) -> None:
    """Each class's priors := Gaussians matching the first two moments of clusters of its posteriors."""
    lpc = model.config.priors_per_class
    prior_means = torch.empty_like(model.prior_means, device="cpu")
    prior_logvars = torch.empty_like(model.prior_logvars, device="cpu")
    for c in range(model.num_classes):
        mu, var = means[labels == c], logvars[labels == c].exp()
        assign = kmeans(mu, lpc, generator)
        for k in range(lpc):
            members = assign == k
            if not members.any():  # fewer rows than priors: reuse a row
                members = torch.arange(len(mu)) == k % len(mu)
            centre = mu[members].mean(0)
            spread = ((mu[members] - centre) ** 2).mean(0) + var[members].mean(0)
            prior_means[c * lpc + k] = centre
            prior_logvars[c * lpc + k] = spread.clamp(min=float(np.exp(MIN_LOGVAR))).log()
    with torch.no_grad():
        model.prior_means.copy_(prior_means)
        model.prior_logvars.copy_(prior_logvars)


def kmeans(points: torch.Tensor, k: int, generator: torch.Generator, iterations: int = 25) -> torch.Tensor:
    """Cluster index of each point (Lloyd's algorithm from a k-means++ start; seeded)."""
    n = len(points)
    if n <= k:
        return torch.arange(n)
    centres = [points[int(torch.randint(n, (1,), generator=generator))]]
    for _ in range(1, k):
        d2 = torch.cdist(points, torch.stack(centres)).pow(2).min(1).values
        centres.append(points[int(torch.multinomial(d2 + 1e-12, 1, generator=generator))])
    centres = torch.stack(centres)
    assign = torch.zeros(n, dtype=torch.long)
    for _ in range(iterations):
        assign = torch.cdist(points, centres).argmin(1)
        for j in range(k):
            if (assign == j).any():
                centres[j] = points[assign == j].mean(0)
    return assign
