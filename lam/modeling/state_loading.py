"""Strict loading of published state dicts into our own module definitions."""

from __future__ import annotations

import torch
from torch import nn

from lam.errors import LamflowError


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load `state` into `module`, every key and every shape, or raise LamflowError.

    Why not `load_state_dict(strict=True)` alone: its error is a multi-line dump; this names
    the counts, the first few missing and unexpected keys and the first shape mismatch in one
    line, with `what` (e.g. "espnetv2_city weights /path/file.pth") in front.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs network {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) {missing[:4]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) {unexpected[:4]}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es), first {shapes[0]}")
        raise LamflowError(f"{what} do not fit the network: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)
