"""OptOU without label leakage: K unrolled gradient steps that refine the class logits.

The LAM paper's OptOU takes gradient steps on a loss between the prediction and the *target
frame's own ground truth*. At inference that label does not exist (and with it any feature
extractor scores 100 mIoU), so that version cannot label new data. Ours keeps the form, K
unrolled steps z_{k+1} = z_k - grad, with learnable step sizes alpha_k and eta_k, but every
target is something inference really has:

* alpha_k scales the gradient of CE(t_k, softmax(z)), where t_k is the current prediction
  smoothed over the frame's own colour/feature affinities (a mean-field message): pixels that
  look alike should agree, which snaps labels to edges and removes speckle.
* eta_k scales the gradient of CE(q, softmax(z)), where q is the soft assignment of each pixel
  to the class prototypes averaged from the seed frames' features: it pulls pixels back to
  what the seeds say the class looks like.

The gradient of CE(t, softmax(z)) with respect to z is softmax(z) - t, so each step is
    z_{k+1} = z_k - alpha_k (p_k - t_k) - eta_k (p_k - q),   p_k = softmax(z_k).
Steps are trained end-to-end on the seed frames' labels (the only labels the model ever sees).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _shifted(x: torch.Tensor, radius: int, dilation: int) -> list[torch.Tensor]:
    """(B, G, h, w) -> the (2r+1)^2 neighbour-shifted copies, row-major over (dy, dx).

    Replicate padding at the border; slicing views instead of `F.unfold` keeps this a few
    cheap element-wise passes (unfold copies every channel N times and is ~5x slower on CPU).
    """
    h, w = x.shape[-2:]
    pad = radius * dilation
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    k = 2 * radius + 1
    return [
        padded[..., i * dilation : i * dilation + h, j * dilation : j * dilation + w]
        for i in range(k)
        for j in range(k)
    ]


def local_affinity(guide: torch.Tensor, radius: int, dilation: int, sigma: float) -> torch.Tensor:
    """Normalised affinities of each pixel to its (2r+1)^2 neighbours.

    Args:
        guide: (B, G, h, w) float guidance (e.g. Lab colour and normalised low-level features).
        radius, dilation: neighbourhood half-size and spacing in pixels of the guide grid.
        sigma: bandwidth; weights are exp(-||g_i - g_j||^2 / (2 sigma^2)).
    Returns:
        (B, N, h, w) with N = (2r+1)^2, summing to 1 over N at every pixel.
    """
    dist = torch.stack(
        [(n - guide).pow(2).sum(1) for n in _shifted(guide, radius, dilation)], dim=1
    )
    return torch.softmax(-dist / (2.0 * sigma**2), dim=1)


def propagate(
    probs: torch.Tensor, affinity: torch.Tensor, radius: int, dilation: int
) -> torch.Tensor:
    """Affinity-weighted average of neighbours' class probabilities.

    probs (B, C, h, w), affinity (B, N, h, w) from `local_affinity` -> (B, C, h, w).
    """
    shifted = _shifted(probs, radius, dilation)
    if torch.is_grad_enabled() and (probs.requires_grad or affinity.requires_grad):
        out = torch.zeros_like(probs)
        for n, neigh in enumerate(shifted):
            out = out + neigh * affinity[:, n : n + 1]
        return out
    # Inference: one accumulator updated in place (no new (B, C, h, w) tensor per neighbour).
    acc = shifted[0] * affinity[:, 0:1]
    for n in range(1, len(shifted)):
        acc.addcmul_(shifted[n], affinity[:, n : n + 1])
    return acc


class OptOU(nn.Module):
    """K unrolled refinement steps with learnable alpha_k (affinity term) and eta_k (prototypes).

    Inputs: logits (B, C, h, w); guide (B, G, h, w); prototype_probs (B, C, h, w) or None.
    Output: refined logits (B, C, h, w).
    """

    def __init__(
        self,
        steps: int = 3,
        radius: int = 2,
        dilation: int = 1,
        sigma: float = 0.5,
        alpha_init: float = 2.0,
        eta_init: float = 0.5,
    ) -> None:
        super().__init__()
        self.steps = steps
        self.radius = radius
        self.dilation = dilation
        self.sigma = sigma
        self.alpha = nn.Parameter(torch.full((steps,), float(alpha_init)))
        self.eta = nn.Parameter(torch.full((steps,), float(eta_init)))

    def forward(
        self,
        logits: torch.Tensor,
        guide: torch.Tensor,
        prototype_probs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.steps == 0:
            return logits
        affinity = local_affinity(guide, self.radius, self.dilation, self.sigma)
        z = logits
        for k in range(self.steps):
            p = torch.softmax(z, dim=1)
            target = propagate(p, affinity, self.radius, self.dilation)
            z = z - self.alpha[k] * (p - target)
            if prototype_probs is not None:
                z = z - self.eta[k] * (p - prototype_probs)
        return z
