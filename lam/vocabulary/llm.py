"""LLM backends for grouping labels and refining the taxonomy mapping, and the prompts.

Two backends, both optional and chosen in params.yaml (`vocabulary.llm`):
- `transformers`: a causal LM from a local directory (e.g. Gemma-3-270M; a GGUF file is read
  with `gguf_file=`, which needs the `gguf` package), greedy decoding so runs repeat.
- `openai`: any OpenAI-compatible chat-completions endpoint given by URL (llama.cpp server,
  vLLM, Ollama); the key, if any, is read from an environment variable, never from params.

The prompts follow LLM2Labels' grouping step and the pre-refinement step of the
training-free LLM-refinement paper; the answers are parsed defensively (lam.vocabulary.
llm_parse): anything malformed returns None and the caller falls back to the embedding
result with a warning.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from lam.errors import LamflowError


class LLM(Protocol):
    """Text in, text out. `version` identifies the model for provenance."""

    version: str

    def complete(self, prompt: str) -> str: ...


def grouping_prompt(labels: Sequence[str]) -> str:
    """Ask for synonym groups with a name and a parent category, as JSON."""
    listing = "\n".join(f"- {label}" for label in labels)
    return (
        "You are building the label vocabulary of a driving dataset. Below are labels "
        "proposed by an image tagger. Group labels that name the same kind of thing "
        "(synonyms or near-synonyms). Give each group a short canonical name and a broader "
        "parent category (for example 'vehicle', 'person', 'structure', 'vegetation').\n"
        f"Labels:\n{listing}\n"
        'Answer with JSON only, in this form: {"groups": [{"name": "car", '
        '"members": ["car", "automobile"], "parent": "vehicle"}]}. Use every label exactly '
        "once and only labels from the list."
    )


def mapping_prompt(synsets: Sequence[str], targets: Sequence[str]) -> str:
    """Ask to map each synset to one target class or 'unmapped', as JSON."""
    return (
        "Map each source label of a driving dataset to the one target class it belongs to, "
        'or to "unmapped" if none fits.\n'
        f"Target classes: {', '.join(targets)}\n"
        f"Source labels: {', '.join(synsets)}\n"
        'Answer with JSON only, one entry per source label: {"source label": "target class"}.'
    )


class TransformersLLM:
    """A local causal LM.

    Args:
        model_dir: transformers directory (config + weights + tokenizer), or a folder with a
            GGUF file named by `gguf_file`.
        gguf_file: file name of a GGUF checkpoint inside `model_dir` (optional).
        max_new_tokens: answer length cap.
    """

    def __init__(
        self, model_dir: str | Path, gguf_file: str = "", max_new_tokens: int = 384
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model_dir).expanduser() if model_dir else None
        if path is None or not path.is_dir():
            raise LamflowError(f"transformers LLM: model directory {model_dir!r} not found")
        extra = {"gguf_file": gguf_file} if gguf_file else {}
        self.tokenizer: Any = AutoTokenizer.from_pretrained(path, local_files_only=True, **extra)
        self.model: Any = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, **extra)
        self.model.eval()
        self.max_new_tokens = max_new_tokens
        self.version = f"transformers:{path.name}{':' + gguf_file if gguf_file else ''}"

    def complete(self, prompt: str) -> str:
        """Greedy answer to `prompt` (chat template applied when the tokenizer has one)."""
        import torch

        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        else:
            text = prompt
        inputs = self.tokenizer(text, return_tensors="pt")
        inputs.pop("token_type_ids", None)
        with torch.inference_mode():
            out = self.model.generate(**inputs, do_sample=False, max_new_tokens=self.max_new_tokens)
        answer = out[0, inputs["input_ids"].shape[1] :]
        return str(self.tokenizer.decode(answer, skip_special_tokens=True))


class OpenAICompatibleLLM:
    """Chat completions over HTTP.

    Args:
        url: base URL, e.g. 'http://127.0.0.1:8080/v1' (POSTs to `{url}/chat/completions`).
        model: model name sent in the request (servers with one model ignore it).
        api_key_env: environment variable holding a bearer token ('' = no auth header).
        timeout: seconds per request.
    """

    def __init__(
        self,
        url: str,
        model: str = "",
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise LamflowError(f"LLM endpoint must be an http(s) URL, got {url!r}")
        self.endpoint = url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env, self.timeout = model, api_key_env, timeout
        self.version = f"openai:{url}:{model}"

    def complete(self, prompt: str) -> str:
        """The first choice's message content; LamflowError naming the URL on failure."""
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "temperature": 0,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.endpoint, data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = json.loads(response.read())
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as exc:
            raise LamflowError(f"LLM endpoint {self.endpoint} failed: {exc}") from exc
        try:
            return str(payload["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError) as exc:
            raise LamflowError(
                f"LLM endpoint {self.endpoint} answered without choices[0].message.content"
            ) from exc
