"""Model artefact: `config.json` + `head.safetensors`, as bytes (callers choose the storage).

The frozen backbone is not copied into the artefact: it is rebuilt from the registry entry named
in the config (its weights ship in a package or sit at a recorded checkpoint path), and its
fingerprint is recorded so a changed backbone is detected at load time.
"""

from __future__ import annotations

import hashlib
import json

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from lam.build import LamConfig, build_backbone, build_lam
from lam.errors import LamflowError
from lam.modeling.backbone import Backbone
from lam.modeling.lam import LabelAnythingModel

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "head.safetensors"
FORMAT_VERSION = 1


def backbone_fingerprint(backbone: Backbone) -> str:
    """sha256 (first 16 hex) over the backbone's tensors: changes whenever its weights do."""
    h = hashlib.sha256()
    for name, tensor in sorted(backbone.state_dict().items()):
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(t.view(-1)[:: max(1, t.numel() // 4096)].float().numpy().tobytes())
    return h.hexdigest()[:16]


def head_state(model: LabelAnythingModel) -> dict[str, torch.Tensor]:
    """Everything trained or set from seeds: adapter, prototypes, OptOU (not the backbone)."""
    return {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if not k.startswith("backbone.")
    }


def model_to_files(model: LabelAnythingModel, config: LamConfig) -> dict[str, bytes]:
    """Serialise to {file name: bytes}; sets `config.version` to a content hash."""
    weights = save_safetensors(head_state(model), metadata={"format": str(FORMAT_VERSION)})
    config.extra = {**config.extra, "backbone_fingerprint": backbone_fingerprint(model.backbone)}
    config.version = ""
    digest = hashlib.sha256(weights + config.to_json().encode()).hexdigest()[:12]
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
    expected = config.extra.get("backbone_fingerprint")
    if expected and backbone_fingerprint(backbone) != expected:
        raise LamflowError(
            f"backbone {config.backbone!r} differs from the one the model was trained on "
            f"(fingerprint {backbone_fingerprint(backbone)} != {expected})"
        )
    model = build_lam(config, backbone=backbone)
    state = load_safetensors(files[WEIGHTS_FILE])
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("backbone.")]
    if missing or unexpected:
        raise LamflowError(
            f"{WEIGHTS_FILE} does not match the config: missing {missing}, unexpected {unexpected}"
        )
    return model.eval(), config
