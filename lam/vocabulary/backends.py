"""Registries of the vocabulary stage's pluggable backends (lazy, see lam.registry).

TAGGERS propose labels for a frame; LLMS group labels and refine the taxonomy mapping.
"""

from __future__ import annotations

from lam.registry import Registry

TAGGERS = Registry("tagger")
TAGGERS.register(
    "imagenet-tagger",
    "lam.vocabulary.imagenet_tagger:ImageNetTagger",
    "pip install timm",
    requires=["timm"],
)
TAGGERS.register(
    "clip",
    "lam.vocabulary.zero_shot:ClipTagger",
    "pip install transformers (needs a local model)",
    requires=["transformers"],
)
TAGGERS.register(
    "siglip",
    "lam.vocabulary.zero_shot:SiglipTagger",
    "pip install transformers (needs a local model)",
    requires=["transformers"],
)
TAGGERS.register(
    "vlm",
    "lam.vocabulary.vlm_tagger:VlmTagger",
    "pip install transformers (needs a local model)",
    requires=["transformers"],
)

LLMS = Registry("llm")
LLMS.register(
    "transformers",
    "lam.vocabulary.llm:TransformersLLM",
    "pip install transformers",
    requires=["transformers"],
)
LLMS.register("openai", "lam.vocabulary.llm:OpenAICompatibleLLM")
