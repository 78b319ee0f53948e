"""Model artefact: `config.json` + `head.safetensors`, as bytes (callers choose the storage).

The frozen backbone is not copied into the artefact: it is rebuilt from the registry entry named
in the config (its weights ship in a package or sit at a recorded checkpoint path), and its
fingerprint is recorded so a changed backbone is detected at load time. The one exception is
what training set in the backbone from the target drives (`adapted_backbone_buffers`: its
BatchNorm statistics, lam.norm_stats): those tensors are carried in `head.safetensors` as
`backbone.*` keys, and the fingerprint covers the rest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from lam.build import LamConfig, build_backbone, build_lam
from lam.errors import LamflowError
from lam.modeling.backbone import Backbone
from lam.modeling.lam import LabelAnythingModel
from lam.norm_stats import norm_statistics_keys

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "head.safetensors"
FORMAT_VERSION = 1


def backbone_fingerprint(backbone: Backbone, carried: tuple[str, ...] = ()) -> str:
    """sha256 (first 16 hex) over the backbone's tensors: changes whenever its weights do.

    `carried`: state-dict keys the artefact stores itself (adapted statistics), left out so
    the fingerprint names the registry's backbone the model was built on.
    """
    h = hashlib.sha256()
    skip = set(carried)
    for name, tensor in sorted(backbone.state_dict().items()):
        if name in skip:
            continue
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(t.view(-1)[:: max(1, t.numel() // 4096)].float().numpy().tobytes())
    return h.hexdigest()[:16]


def _check_carried(backbone: Backbone, carried: tuple[str, ...]) -> None:
    """Only BatchNorm running statistics may travel with the head (lam.norm_stats): any other
    backbone tensor would replace a frozen weight the fingerprint no longer covers."""
    allowed = set(norm_statistics_keys(backbone))
    bad = [k for k in carried if k not in allowed]
    if bad:
        shown = ", ".join(f"backbone.{k}" for k in bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise LamflowError(
            f"{WEIGHTS_FILE} carries backbone tensors that are no BatchNorm statistics: {shown}"
        )


def head_state(model: LabelAnythingModel) -> dict[str, torch.Tensor]:
    """Everything trained or set from seeds: adapter, prototypes, OptOU, and the backbone
    tensors set from the target drives' frames (`model.adapted_backbone_buffers`)."""
    carried = {f"backbone.{k}" for k in model.adapted_backbone_buffers}
    return {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if not k.startswith("backbone.") or k in carried
    }


def _identity_json(config: LamConfig) -> str:
    """The config as the version hashes it: without `backbone_options.weights`.

    That option only says where this machine found the backbone's file, a hint for loading;
    the fingerprint names the tensors, so the same model trained where the file lies
    elsewhere gets the same version (and the nightly flow relabels nothing for a move).
    """
    if "weights" not in (config.backbone_options or {}):
        return config.to_json()
    options = {k: v for k, v in config.backbone_options.items() if k != "weights"}
    return replace(config, backbone_options=options).to_json()


def model_to_files(model: LabelAnythingModel, config: LamConfig) -> dict[str, bytes]:
    """Serialise to {file name: bytes}; sets `config.version` to a content hash."""
    _check_carried(model.backbone, model.adapted_backbone_buffers)
    weights = save_safetensors(head_state(model), metadata={"format": str(FORMAT_VERSION)})
    fingerprint = backbone_fingerprint(model.backbone, model.adapted_backbone_buffers)
    config.extra = {**config.extra, "backbone_fingerprint": fingerprint}
    config.version = ""
    digest = hashlib.sha256(weights + _identity_json(config).encode()).hexdigest()[:12]
    config.version = f"lam-{digest}"
    return {CONFIG_FILE: config.to_json().encode(), WEIGHTS_FILE: weights}


def model_from_files(
    files: dict[str, bytes], backbone: Backbone | None = None
) -> tuple[LabelAnythingModel, LamConfig]:
    """Inverse of `model_to_files`. Raises LamflowError on a missing or mismatched file."""
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if name not in files:
            raise LamflowError(f"model directory lacks {name}")
    try:
        config = LamConfig.from_dict(json.loads(files[CONFIG_FILE]))
    except (json.JSONDecodeError, TypeError) as exc:
        raise LamflowError(f"{CONFIG_FILE} is not a valid model config: {exc}") from exc
    backbone = backbone or build_backbone(config.backbone, config.backbone_options)
    state = load_safetensors(files[WEIGHTS_FILE])
    carried = tuple(sorted(k[len("backbone.") :] for k in state if k.startswith("backbone.")))
    _check_carried(backbone, carried)
    expected = config.extra.get("backbone_fingerprint")
    found = backbone_fingerprint(backbone, carried)
    if expected and found != expected:
        raise LamflowError(
            f"backbone {config.backbone!r} differs from the one the model was trained on "
            f"(fingerprint {found} != {expected})"
        )
    model = build_lam(config, backbone=backbone)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("backbone.")]
    if missing or unexpected:
        raise LamflowError(
            f"{WEIGHTS_FILE} does not match the config: missing {missing}, unexpected {unexpected}"
        )
    model.adapted_backbone_buffers = carried
    return model.eval(), config
