"""Class map head: a source network's class probabilities carried onto the target taxonomy.

P(target c | x) = sum_s M[c, s] P(source s | x), with M (C, S) a column-stochastic map (a
column may sum to less than 1: the rest of that source class's mass goes nowhere, which is how
an unmapped source class like Cityscapes 'train' on a taxonomy without it is ignored). The
head's logits are log P(c | x) + bias_c; a target class no source maps to gets probability
`floor`, so it exists in the output but never wins unless the bias says so.

Why probabilities and not a linear map of logits: summing probabilities is what "building and
wall are both 'building'" means, a hand map is exactly a 0/1 M, and M can be estimated from a
few seed pixels as co-occurrence counts shrunk towards the hand or name map (`estimate`), with
no gradient step that could overfit the seeds' drives.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ClassMapAdapter(nn.Module):
    """Source logits tap -> target logits on the output grid.

    forward(taps, size): taps[0] (B, S, h, w) source logits -> (B, C, size[0], size[1]).
    Buffers: `mapping` (C, S) in [0, 1], columns summing to at most 1; `prior` (C, S), the
    name or hand map that seeds are shrunk towards; `fixed` (S,) bool, source classes whose
    column a person set (manual rows: seeds never change them). Parameter: `bias` (C,).
    """

    is_linear = False  # not an affine map of features: set_linear-style fits do not apply

    def __init__(
        self,
        num_sources: int,
        num_classes: int,
        prior: torch.Tensor | None = None,
        fixed: torch.Tensor | None = None,
        floor: float = 1e-4,
    ) -> None:
        super().__init__()
        prior = torch.zeros(num_classes, num_sources) if prior is None else prior.float()
        if tuple(prior.shape) != (num_classes, num_sources):
            raise ValueError(
                f"class map prior has shape {tuple(prior.shape)}, "
                f"expected (classes, sources) = {(num_classes, num_sources)}"
            )
        sums = prior.sum(0)
        if (prior < 0).any() or (sums > 1 + 1e-5).any():
            bad = (
                int(torch.argmax(sums))
                if (sums > 1 + 1e-5).any()
                else int((prior < 0).any(0).nonzero()[0])
            )
            raise ValueError(
                f"class map prior column {bad} is {prior[:, bad].tolist()}: columns must be "
                "non-negative and sum to at most 1"
            )
        fixed = torch.zeros(num_sources, dtype=torch.bool) if fixed is None else fixed.bool()
        self.register_buffer("prior", prior.clone())
        self.register_buffer("mapping", prior.clone())
        self.register_buffer("fixed", fixed.clone())
        self.bias = nn.Parameter(torch.zeros(num_classes))
        self.num_classes = num_classes
        self.num_sources = num_sources
        self.floor = float(floor)

    def mapping_matrix(self) -> torch.Tensor:
        """(C, S) the map in use (a typed view of the `mapping` buffer)."""
        mapping = self.mapping
        if not isinstance(mapping, torch.Tensor):  # for the type checker: a registered buffer
            raise TypeError("mapping is not a tensor")
        return mapping

    def _map(self, source_logits: torch.Tensor, dim: int) -> torch.Tensor:
        probs = torch.softmax(source_logits.float(), dim=dim)
        if dim == 1 and probs.ndim == 4:
            mapped = torch.einsum("cs,bshw->bchw", self.mapping, probs)
            bias = self.bias.view(1, -1, 1, 1)
        else:
            mapped = probs @ self.mapping.T
            bias = self.bias
        return torch.log(mapped.clamp_min(0) + self.floor) + bias

    def forward(self, taps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        source = taps[0]
        if tuple(source.shape[-2:]) != tuple(size):
            # Plain bilinear, though the network's grid is finer than the output grid on a side
            # (384 -> 240 columns for CamVid): on the folds (every 2nd scored frame, cached
            # logits) antialiasing scored 55.25 / 54.66 / 56.10 against 55.31 / 54.69 / 56.12
            # without (zero seeds / 6 / 6 + 4 same-drive), and cost ~4 ms a frame on 2 cores.
            source = F.interpolate(source.float(), size=size, mode="bilinear", align_corners=False)
        return self._map(source, dim=1).contiguous()

    def point_features(
        self, taps: list[torch.Tensor], points: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Source logits at (N, 2) (y, x) full-resolution pixel centres -> (N, S) float32."""
        h, w = image_size
        gy = (points[:, 0] + 0.5) / h * 2 - 1
        gx = (points[:, 1] + 0.5) / w * 2 - 1
        grid = torch.stack([gx, gy], -1).view(1, 1, -1, 2).float()
        out = F.grid_sample(taps[0].float(), grid, mode="bilinear", align_corners=False)
        return out[0, :, 0].T.contiguous()

    def forward_points(self, features: torch.Tensor) -> torch.Tensor:
        """(N, S) source logits from `point_features` -> (N, C) target logits."""
        return self._map(features, dim=-1)

    @torch.no_grad()
    def estimate(
        self,
        features: torch.Tensor,
        ids: torch.Tensor,
        prior_strength: float,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Set `mapping` from labelled pixels; returns the soft counts (C, S).

        features: (N, S) source logits at labelled pixels; ids: (N,) target ids in [0, C);
        weights: optional (N,) per-pixel trust. Column s becomes
        (counts[:, s] + a * prior[:, s]) / (counts[:, s].sum() + a) with a = prior_strength
        (in pixels): a source class the seeds barely show keeps its prior, one they show
        often follows where its pixels really fall. Fixed (manual) columns keep the prior.
        `prior_strength` = inf keeps the prior everywhere (the zero-seed map).
        """
        probs = torch.softmax(features.float(), dim=1)  # (N, S)
        if weights is not None:
            probs = probs * weights.float()[:, None]
        onehot = F.one_hot(ids.long(), self.num_classes).float()  # (N, C)
        counts = onehot.T @ probs  # (C, S)
        if prior_strength == float("inf"):
            mapping = self.prior.clone()
        else:
            a = float(prior_strength)
            mapping = (counts + a * self.prior) / (counts.sum(0, keepdim=True) + a).clamp_min(1e-9)
        mapping[:, self.fixed] = self.prior[:, self.fixed]
        self.mapping.copy_(mapping)
        return counts


def mapping_matrix(
    rows: dict[str, str], source_classes: tuple[str, ...], target_classes: list[str]
) -> torch.Tensor:
    """{source class: target class or 'unmapped'} -> (C, S) 0/1 float map.

    Raises ValueError naming a source or target class the rows mention that does not exist.
    Source classes without a row are unmapped.
    """
    index = {name: i for i, name in enumerate(target_classes)}
    matrix = torch.zeros(len(target_classes), len(source_classes))
    unknown_sources = sorted(set(rows) - set(source_classes))
    if unknown_sources:
        raise ValueError(
            f"class map names source classes {unknown_sources} the network does not have; "
            f"it has {list(source_classes)}"
        )
    for s, name in enumerate(source_classes):
        target = rows.get(name, "unmapped")
        if target == "unmapped":
            continue
        if target not in index:
            raise ValueError(
                f"class map sends {name!r} to {target!r}, which is not a target class "
                f"({', '.join(target_classes)})"
            )
        matrix[index[target], s] = 1.0
    return matrix
