"""Prompt fixtures: the synthetic scene's class list and a tiny randomly initialised SAM."""

from __future__ import annotations

import pytest

from lam.classes import ClassList


@pytest.fixture()
def scene_classes(tiny_classes: dict) -> ClassList:
    return ClassList.from_json(tiny_classes)


@pytest.fixture(scope="session")
def tiny_sam():
    """segment_anything's real Sam with tiny dims (64 px input, 1 block), random weights."""
    import torch
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    torch.manual_seed(0)
    dim, img = 32, 64
    encoder = ImageEncoderViT(
        img_size=img,
        patch_size=16,
        embed_dim=dim,
        depth=1,
        num_heads=2,
        out_chans=dim,
        use_rel_pos=False,
        window_size=0,
        global_attn_indexes=(),
    )
    prompt = PromptEncoder(
        embed_dim=dim,
        image_embedding_size=(img // 16, img // 16),
        input_image_size=(img, img),
        mask_in_chans=4,
    )
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
        transformer_dim=dim,
        iou_head_depth=1,
        iou_head_hidden_dim=16,
    )
    return Sam(encoder, prompt, decoder, [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]).eval()
