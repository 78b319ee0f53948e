"""Tiny randomly initialised transformers models, built offline in tmp folders."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

WORDS = ["car", "road", "tree", "sky", "building", "person", "bicycle", "sign", ",", "and"]


def save_tokenizer(path: Path, words: list[str] = WORDS, max_length: int = 16) -> int:
    """A word-level tokenizer over `words` (+ [PAD] [UNK] [BOS] [EOS]) saved to `path`.

    Returns the vocabulary size. Ids: 0 pad, 1 unk, 2 bos, 3 eos.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        model_max_length=max_length,
    )
    fast.save_pretrained(path)
    return len(vocab)


_TINY_VISION = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=1,
    num_attention_heads=2,
)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A CLIP with 1-layer 32-wide towers, its image processor and a word-level tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    path = tmp_path_factory.mktemp("tiny_clip")
    vocab_size = save_tokenizer(path)
    torch.manual_seed(0)
    text = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    config = CLIPConfig(text_config=text, vision_config=_TINY_VISION, projection_dim=16)
    CLIPModel(config).save_pretrained(path)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory) -> Path:
    """A SigLIP with 1-layer 32-wide towers, its image processor and a word-level tokenizer."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    path = tmp_path_factory.mktemp("tiny_siglip")
    vocab_size = save_tokenizer(path)
    torch.manual_seed(0)
    text = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
        pad_token_id=0,
    )
    SiglipModel(SiglipConfig(text_config=text, vision_config=_TINY_VISION)).save_pretrained(path)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory) -> Path:
    """A ViT -> GPT-2 VisionEncoderDecoder (image-to-text), 1 layer each, 32 wide."""
    from transformers import (
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    path = tmp_path_factory.mktemp("tiny_vlm")
    vocab_size = save_tokenizer(path, max_length=64)
    torch.manual_seed(0)
    encoder = ViTConfig(**_TINY_VISION)
    decoder = GPT2Config(
        vocab_size=vocab_size,
        n_embd=32,
        n_layer=1,
        n_head=2,
        n_positions=128,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 2, 0, 3
    VisionEncoderDecoderModel(config=config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_causal_lm_dir(tmp_path_factory) -> Path:
    """A 1-layer GPT-2 causal LM with a word-level tokenizer (answers random words)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("tiny_lm")
    vocab_size = save_tokenizer(path, words=[*WORDS, "{", "}", '"', ":"], max_length=512)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_embd=32,
        n_layer=1,
        n_head=2,
        n_positions=1024,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


@pytest.fixture()
def street_image() -> np.ndarray:
    """(48, 64, 3) uint8 RGB: sky band over a road band, a little noise."""
    rng = np.random.default_rng(0)
    img = np.zeros((48, 64, 3), np.float32)
    img[:20] = (150, 170, 210)
    img[20:] = (70, 70, 75)
    img += rng.normal(0, 5, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


class ChatHandler(BaseHTTPRequestHandler):
    """A one-answer OpenAI-compatible chat endpoint; records the requests it got."""

    requests: list[dict] = []
    content = '{"groups": [{"name": "car", "members": ["car", "automobile"]}]}'

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization")
        type(self).requests.append({"path": self.path, "body": body, "auth": auth})
        message = {"role": "assistant", "content": type(self).content}
        payload = json.dumps({"choices": [{"message": message}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def chat_server():
    """Base URL ('http://127.0.0.1:PORT/v1') of a ChatHandler server in a thread."""
    server = HTTPServer(("127.0.0.1", 0), ChatHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()
