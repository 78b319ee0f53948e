"""Tiny, randomly initialised zero-shot models for offline tests.

Every ``save_tiny_*`` helper builds a model from a config only (nothing is downloaded), seeds
``torch.manual_seed(0)`` first so the weights are deterministic, and writes the model plus its
processor/tokenizer to ``path`` in the ``save_pretrained`` layout, so that::

    Model.from_pretrained(path, local_files_only=True)
    Processor.from_pretrained(path, local_files_only=True)

load it back.  ``tiny_segment_anything_sam`` returns an in-memory ``segment_anything`` SAM.

Verified with transformers 5.23.0, torch 2.14 (CPU) and segment-anything 1.0.  Every model builds
in well under a second on 2 CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = [
    "CLIP_MAX_TEXT_LEN",
    "GDINO_MAX_TEXT_LEN",
    "GDINO_NUM_QUERIES",
    "GDINO_WORDS",
    "save_tiny_clip",
    "save_tiny_grounding_dino",
    "save_tiny_hf_sam",
    "save_tiny_lam",
    "save_tiny_owlv2",
    "tiny_segment_anything_sam",
]

# Text length (max_position_embeddings / tokenizer.model_max_length) of the CLIP-style text towers.
# 77 like real CLIP: with a char-level vocab every character is a token, so prompts get long.
CLIP_MAX_TEXT_LEN = 77
# Grounding DINO: queries and padded text length of its logits.
GDINO_NUM_QUERIES = 20
GDINO_MAX_TEXT_LEN = 32
# Whole words in the tiny BERT vocab (anything else falls back to single characters / [UNK]).
GDINO_WORDS = (
    "a",
    "car",
    "road",
    "tree",
    "sky",
    "person",
    "pavement",
    "sidewalk",
    "building",
    "the",
)


# ----------------------------------------------------------------------------------------------
# tokenizers
# ----------------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode character table (256 entries)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _clip_vocab() -> dict[str, int]:
    """Byte-level char vocab: 256 chars, the same with ``</w>``, <|startoftext|>, <|endoftext|>.

    ``<|endoftext|>`` gets the highest id (513) on purpose: OWL-ViT/OWLv2 pool the text at
    ``input_ids.argmax(-1)``, which must land on the EOS token, like the real CLIP vocab (49407).
    """
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


CLIP_VOCAB_SIZE = 514
CLIP_BOS_ID = 512
CLIP_EOS_ID = 513  # also pad and unk


def _clip_tokenizer(path: Path):
    """Offline CLIPTokenizer over :func:`_clip_vocab` with no BPE merges.

    vocab.json and merges.txt ("#version: 0.2" only) are written to ``path`` for reference; the
    tokenizer itself is built from the same dict (transformers 5 takes ``vocab=``/``merges=``) and
    ``save_pretrained`` later adds tokenizer.json, which is what ``from_pretrained`` loads.
    """
    from transformers import CLIPTokenizer

    path.mkdir(parents=True, exist_ok=True)
    vocab = _clip_vocab()
    assert len(vocab) == CLIP_VOCAB_SIZE
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_TEXT_LEN)
    assert (
        tok.bos_token_id == CLIP_BOS_ID
        and tok.eos_token_id == CLIP_EOS_ID
        and tok.pad_token_id == CLIP_EOS_ID
    )
    return tok


def _clip_text_kwargs() -> dict:
    return dict(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=CLIP_MAX_TEXT_LEN,
        bos_token_id=CLIP_BOS_ID,
        eos_token_id=CLIP_EOS_ID,
        pad_token_id=CLIP_EOS_ID,
    )


def _vision_kwargs(image_size: int, patch_size: int) -> dict:
    return dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )


def _bert_tokenizer(path: Path):
    """Offline BertTokenizerFast from a hand-written vocab.txt (specials, '.', a-z, GDINO_WORDS)."""
    from transformers import BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?"]
    tokens += [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens += ["##" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens += [w for w in GDINO_WORDS if w not in tokens]
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    # transformers 5 takes the vocab itself (``vocab=``); a ``vocab_file=`` kwarg is silently
    # ignored and leaves a 5-token vocab that maps every word to [UNK].
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=GDINO_MAX_TEXT_LEN)
    assert tok.convert_tokens_to_ids("car") == vocab["car"]
    return tok, len(tokens)


# ----------------------------------------------------------------------------------------------
# 1. CLIP
# ----------------------------------------------------------------------------------------------


def save_tiny_clip(path: Path) -> Path:
    """Tiny ``CLIPModel`` + ``CLIPProcessor`` (~54 k params).

    Sizes: text and vision towers hidden 32, 2 layers, 2 heads, intermediate 37; projection_dim 16;
    vision image_size 32, patch_size 8 (4x4 = 16 patches + CLS); text vocab 514 byte-level chars
    (no BPE merges: ~1 token per character), max 77 tokens; bos 512, eos = pad = 513.  The image
    processor resizes the shortest edge to 32 and centre-crops 32x32.

    Verified calls (``model = CLIPModel.from_pretrained(path, local_files_only=True)``,
    ``proc = CLIPProcessor.from_pretrained(path, local_files_only=True)``)::

        t = proc.tokenizer(["a photo of a car."], padding=True, return_tensors="pt")
        model.get_text_features(**t).pooler_output   # -> (1, 16)
        px = proc(images=[np_hwc_uint8], return_tensors="pt").pixel_values   # (1, 3, 32, 32)
        model.get_image_features(pixel_values=px).pooler_output   # -> (1, 16)
        out = model.vision_model(torch.rand(1, 3, 40, 56), output_hidden_states=True,
                                 interpolate_pos_encoding=True)
        out.last_hidden_state    # (1, 1 + 5*7, 32);  out.hidden_states: 3 x (1, 36, 32)

    Note: in transformers 5.23 ``get_text_features`` / ``get_image_features`` return a
    ``BaseModelOutputWithPooling`` whose ``.pooler_output`` is the projected (1, 16) embedding
    (older versions returned the tensor directly).
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    path = Path(path)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=_clip_text_kwargs(),
        vision_config=_vision_kwargs(image_size=32, patch_size=8),
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    tok = _clip_tokenizer(path)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    model.save_pretrained(path)
    CLIPProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(path)
    return path


# ----------------------------------------------------------------------------------------------
# 2. OWLv2
# ----------------------------------------------------------------------------------------------


def save_tiny_owlv2(path: Path) -> Path:
    """Tiny ``Owlv2ForObjectDetection`` + ``Owlv2Processor``.

    Sizes: CLIP-like text tower as in :func:`save_tiny_clip` (the same offline 514-char tokenizer,
    max 77 tokens; the processor pads every query to 77), vision hidden 32, 2 layers, 2 heads,
    image_size 64, patch_size 16 -> 4x4 = 16 patches; projection_dim 32 (the class head
    requires projection_dim == text hidden_size).  The image processor pads to a square and
    resizes to 64x64.

    Verified calls::

        inputs = proc(text=[["a car", "a road"]], images=np_hwc_uint8, return_tensors="pt")
        # input_ids (2, 77), attention_mask (2, 77), pixel_values (1, 3, 64, 64)
        out = model(**inputs)
        out.logits        # (1, 16, 2)   one column per query
        out.pred_boxes    # (1, 16, 4)   normalised cxcywh on the padded square
        proc.post_process_grounded_object_detection(out, threshold=0.0, target_sizes=[(H, W)])
    """
    from transformers import (
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    path = Path(path)
    torch.manual_seed(0)
    config = Owlv2Config(
        text_config=_clip_text_kwargs(),
        vision_config=_vision_kwargs(image_size=64, patch_size=16),
        projection_dim=32,  # OWLv2's class head needs projection_dim == text hidden_size
    )
    model = Owlv2ForObjectDetection(config).eval()
    tok = _clip_tokenizer(path)
    image_processor = Owlv2ImageProcessor(size={"height": 64, "width": 64})
    model.save_pretrained(path)
    Owlv2Processor(image_processor=image_processor, tokenizer=tok).save_pretrained(path)
    return path


# ----------------------------------------------------------------------------------------------
# 3. Grounding DINO
# ----------------------------------------------------------------------------------------------


def save_tiny_grounding_dino(path: Path) -> Path:
    """Tiny ``GroundingDinoForObjectDetection`` + ``GroundingDinoProcessor``.

    Sizes: d_model 32 (the input projections use GroupNorm(32, d_model), so d_model must be a
    multiple of 32), 1 encoder + 2 decoder layers (1 decoder layer breaks the shared-bbox-head
    weight tying in transformers 5.23), 2 heads, ffn 32, 20 queries, max_text_len 32,
    4 feature levels (3 from the backbone + 1 extra conv).  Backbone: transformers ``ResNetConfig``
    (basic blocks, embedding 8, hidden sizes 8/16/32/64, one block per stage,
    out_features stage2..stage4).  Text backbone: ``BertConfig`` hidden 32, 1 layer, 2 heads.
    Tokenizer: ``BertTokenizerFast`` over a hand-written vocab ([PAD] [UNK] [CLS] [SEP] [MASK] . , ?
    a-z, ##a-##z, and ``GDINO_WORDS``).  Image processor: shortest_edge 64, longest_edge 96.

    Verified calls::

        inputs = proc(images=np_hwc_uint8, text="car. road.", return_tensors="pt")
        # for a 48x64 image: pixel_values (1, 3, 64, 85), pixel_mask (1, 64, 85), input_ids (1, 6)
        out = model(**inputs)
        out.logits        # (1, 20, 32) = (1, num_queries, max_text_len); padded slots are -inf
        out.pred_boxes    # (1, 20, 4)
        proc.post_process_grounded_object_detection(
            out, inputs.input_ids, threshold=0.0, text_threshold=0.0, target_sizes=[(H, W)])
        # -> [{"scores": (20,), "boxes": (20, 4) xyxy pixels, "labels": [..], "text_labels": [..]}]

    Real signature (transformers 5.23): ``post_process_grounded_object_detection(outputs,
    input_ids=None, threshold=0.25, text_threshold=0.25, target_sizes=None, text_labels=None)``.
    """
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        ResNetConfig,
    )

    path = Path(path)
    torch.manual_seed(0)
    tok, vocab_size = _bert_tokenizer(path)
    backbone_config = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16, 32, 64],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        out_features=["stage2", "stage3", "stage4"],
    )
    text_config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=GDINO_MAX_TEXT_LEN,
        pad_token_id=0,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone_config,
        text_config=text_config,
        d_model=32,
        encoder_layers=1,
        # 2, not 1: with the default decoder_bbox_embed_share=True, a 1-layer decoder makes the
        # tie pattern "bbox_embed.(?![0])\d+" match nothing and post_init() raises ValueError.
        decoder_layers=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_n_points=2,
        decoder_n_points=2,
        num_queries=GDINO_NUM_QUERIES,
        num_feature_levels=4,
        max_text_len=GDINO_MAX_TEXT_LEN,
    )
    model = GroundingDinoForObjectDetection(config).eval()
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    model.save_pretrained(path)
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(path)
    return path


# ----------------------------------------------------------------------------------------------
# 4. transformers SAM
# ----------------------------------------------------------------------------------------------


def save_tiny_hf_sam(path: Path) -> Path:
    """Tiny ``transformers.SamModel`` + ``SamProcessor``.

    Sizes: vision ViT hidden 32, 2 layers, 2 heads, image_size 64, patch 16 (4x4 embedding grid),
    window_size 2, global_attn_indexes (1,), output_channels 16, num_pos_feats 8 (2*8 = 16 =
    prompt/decoder width); prompt encoder hidden 16, mask_input_channels 4; mask decoder hidden 16,
    mlp 32, 1 two-way layer, 2 heads, iou head depth 1 / width 16; low-res masks are 16x16.
    Image processor: ``size={"longest_edge": 64}``, ``pad_size={"height": 64, "width": 64}``
    (``mask_size={"longest_edge": 16}``, ``mask_pad_size={"height": 16, "width": 16}``).

    Verified calls (one box plus N points for one image; coordinates in original-image pixels)::

        inputs = proc(images=np_hwc_uint8,
                      input_boxes=[[[x0, y0, x1, y1]]],             # (images, boxes, 4)
                      input_points=[[[[x1, y1], ..., [xN, yN]]]],   # (images, boxes, N, 2)
                      input_labels=[[[1, ..., 1]]],                 # (images, boxes, N)
                      return_tensors="pt")
        # input_boxes (1, 1, 4), input_points (1, 1, N, 2), input_labels (1, 1, N)
        out = model(**inputs, multimask_output=False)
        out.pred_masks    # (1, 1, 1, 16, 16);  out.iou_scores (1, 1, 1)
        masks = proc.image_processor.post_process_masks(
            out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])
        masks[0]          # bool (1, 1, H, W)   i.e. (boxes, masks_per_box, H, W)

    ``input_labels`` may be omitted (then all points are treated as positive).
    """
    from transformers import (
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    path = Path(path)
    torch.manual_seed(0)
    vision_config = SamVisionConfig(
        hidden_size=32,
        output_channels=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=16,
        window_size=2,
        global_attn_indexes=[1],
        num_pos_feats=8,
        mlp_dim=64,
    )
    prompt_config = SamPromptEncoderConfig(
        hidden_size=16, image_size=64, patch_size=16, mask_input_channels=4
    )
    decoder_config = SamMaskDecoderConfig(
        hidden_size=16,
        mlp_dim=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_multimask_outputs=3,
        iou_head_depth=1,
        iou_head_hidden_dim=16,
    )
    config = SamConfig(
        vision_config=vision_config,
        prompt_encoder_config=prompt_config,
        mask_decoder_config=decoder_config,
    )
    model = SamModel(config).eval()
    image_processor = SamImageProcessor(
        size={"longest_edge": 64},
        pad_size={"height": 64, "width": 64},
        mask_size={"longest_edge": 16},
        mask_pad_size={"height": 16, "width": 16},
    )
    model.save_pretrained(path)
    SamProcessor(image_processor=image_processor).save_pretrained(path)
    return path


# ----------------------------------------------------------------------------------------------
# 5. segment_anything SAM
# ----------------------------------------------------------------------------------------------


def tiny_segment_anything_sam():
    """Tiny in-memory ``segment_anything.modeling.Sam`` (eval mode, seed 0).

    Sizes: ``ImageEncoderViT(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2,
    out_chans=16, window_size=2, global_attn_indexes=(1,), use_rel_pos=True)``;
    ``PromptEncoder(embed_dim=16, image_embedding_size=(4, 4), input_image_size=(64, 64),
    mask_in_chans=4)``; ``MaskDecoder(TwoWayTransformer(depth=1, embedding_dim=16, mlp_dim=32,
    num_heads=2), transformer_dim=16, num_multimask_outputs=3, iou_head_depth=1,
    iou_head_hidden_dim=16)``.

    Verified calls::

        p = SamPredictor(sam); p.set_image(np_hwc_uint8)        # RGB, any H x W
        masks, scores, logits = p.predict(point_coords=np.array([[x, y], ...]),   # (N, 2)
                                          point_labels=np.array([1, ...]),        # (N,)
                                          box=np.array([x0, y0, x1, y1]),         # (4,)
                                          multimask_output=False)
        # masks bool (1, H, W), scores (1,), logits (1, 16, 16)
        SamAutomaticMaskGenerator(sam, points_per_side=4).generate(np_hwc_uint8)
        # list of dicts (often empty with random weights) - does not crash on 48x64
    """
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    torch.manual_seed(0)
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=64,
            patch_size=16,
            embed_dim=32,
            depth=2,
            num_heads=2,
            mlp_ratio=2.0,
            out_chans=16,
            qkv_bias=True,
            use_rel_pos=True,
            window_size=2,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=16, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=4
        ),
        mask_decoder=MaskDecoder(
            transformer=TwoWayTransformer(depth=1, embedding_dim=16, mlp_dim=32, num_heads=2),
            transformer_dim=16,
            num_multimask_outputs=3,
            iou_head_depth=1,
            iou_head_hidden_dim=16,
        ),
    )
    return sam.eval()


def save_tiny_lam(path: Path, names: tuple[str, ...] = ("sky", "road", "car")) -> Path:
    """A lamflow model directory (config.json + head.safetensors) for the class list `names`
    (ignore id 255): the packaged EfficientNet-Lite0 backbone with an untrained linear head,
    what the source_model backend loads from `zero_shot_seeds.source_model_dir`."""
    from lam.build import LamConfig, build_lam
    from tasks.model_io import save_model

    classes = {"ignore_index": 255, "classes": [{"id": i, "name": n} for i, n in enumerate(names)]}
    config = LamConfig(classes=classes, backbone="efficientnet_lite0")
    save_model(str(path), build_lam(config, seed=0), config)
    return path
