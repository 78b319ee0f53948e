"""Strict loading of published state dicts, with errors that name what does not line up.

`nn.Module.load_state_dict(strict=True)` already refuses a mismatch, but its message lists
every key at once and mixes missing keys with shape errors; a wrong network variant (width,
class count, build size) then reads as a wall of names. Here the check runs first and the
error says how many keys are missing / unexpected, shows the first few, and names the first
tensor whose shape differs, so the user sees at once which part of the network disagrees.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from lam.errors import LamflowError

_SHOWN_KEYS = 5


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    more = len(keys) - _SHOWN_KEYS
    return f"{shown}, ... ({more} more)" if more > 0 else shown


def state_mismatches(module: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Human-readable reasons why `state` does not load strictly into `module` (empty: it does).

    Checks, in this order: keys the module has that `state` lacks, keys `state` has that the
    module lacks, then the first key (in the module's order) whose tensor shape differs.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    problems: list[str] = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}")
    for key, tensor in own.items():
        if key not in state:
            continue
        given = state[key]
        if not isinstance(given, torch.Tensor):
            problems.append(f"{key} is a {type(given).__name__}, not a tensor")
            break
        if tuple(given.shape) != tuple(tensor.shape):
            problems.append(
                f"shape mismatch at {key}: file has {tuple(given.shape)}, "
                f"network expects {tuple(tensor.shape)}"
            )
            break
    return problems


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Copy every tensor of `state` into `module`, or raise without changing anything.

    Args:
        module: the network to fill; its parameters and buffers keep their device and dtype.
        state: a plain state dict (e.g. `torch.load(path, weights_only=True)`), on any device.
        what: what is being loaded, for the message (e.g. "DiCENet s=1.75 Cityscapes weights").

    Raises:
        LamflowError: naming the missing and unexpected keys and the first shape mismatch.
    """
    problems = state_mismatches(module, state)
    if problems:
        raise LamflowError(f"{what} do not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(dict(state), strict=True)
