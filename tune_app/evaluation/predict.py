"""Rebuild a trained model from a checkpoint and predict a split with it.

The model is rebuilt from the checkpoint's own ``compat.architecture`` (head names and
sizes it was trained with), on the encoder of the trial's config, then its state dict
is loaded strictly. Predictions keep what the metrics and the threshold calibration
need: per-post criteria probabilities and, per evidence slot, the best non-null span,
its margin over the null span, the gold span and the char offsets to decode it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tune_app.config import AppConfig
from tune_app.data.schema import NO_SYMPTOMS, SYMPTOMS, Post, evidence_char_spans
from tune_app.evaluation.forward import SplitPass, run_split


class EvaluationError(ValueError):
    """The study or checkpoint cannot be evaluated; the message says why and what to do."""


def criteria_names(cfg: AppConfig) -> list[str]:
    """Label names in label-index order: the nine symptoms, plus NO_SYMPTOMS when included."""
    return list(SYMPTOMS) + ([NO_SYMPTOMS] if cfg.data.include_no_symptoms else [])


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any
    trainer_state: dict[str, Any]


def load_model(checkpoint: Path, cfg: AppConfig, device: torch.device) -> LoadedModel:
    """Verify, rebuild and load the model saved in ``checkpoint`` (eval mode, on ``device``)."""
    from tune_app.checkpoints.store import CorruptCheckpointError, load_checkpoint
    from tune_app.models.dual_head import architecture_signature
    from tune_app.models.encoders import load_encoder
    from tune_app.trainable import make_model

    try:
        loaded = load_checkpoint(checkpoint, map_location="cpu")
    except CorruptCheckpointError as exc:
        raise EvaluationError(str(exc)) from exc
    arch: dict[str, Any] = dict(loaded.compat.get("architecture") or {})
    # The model the checkpoint was trained as: its saved architecture over the trial's config.
    m = cfg.model
    saved_model = dataclasses.replace(
        m, name=str(arch.get("encoder_name") or m.name), criteria_head=str(arch.get("criteria_head", m.criteria_head)),
        evidence_head=str(arch.get("evidence_head", m.evidence_head)), pooling=str(arch.get("pooling", m.pooling)),
        head_hidden=int(arch.get("head_hidden", m.head_hidden)), coupling=str(arch.get("coupling") or m.coupling),
        coupling_method=str(arch.get("coupling_method") or m.coupling_method),
        coupling_pooling=str(arch.get("coupling_pooling") or m.coupling_pooling))
    encoder = load_encoder(saved_model.name, revision=m.revision, seed=cfg.seed)
    model = make_model(dataclasses.replace(cfg, model=saved_model), encoder, seed=cfg.seed)
    saved_hash = arch.get("state_dict_hash")
    if saved_hash is not None and architecture_signature(model)["state_dict_hash"] != saved_hash:
        raise EvaluationError(f"{checkpoint}: the rebuilt model does not match the saved architecture "
                              f"{arch}; evaluate with the code version that trained it")
    model.load_state_dict(loaded.model_state, strict=True)
    model.to(device).eval()
    return LoadedModel(model=model, tokenizer=encoder.tokenizer, trainer_state=loaded.trainer_state)


@dataclass(kw_only=True)
class Predictions(SplitPass):
    """A model's outputs on a split (the shared pass's arrays), with the post ids, criterion
    names, and per slot the token offsets and gold char spans to decode and score spans."""

    post_ids: list[str]
    criteria: list[str]
    slot_offsets: list[Sequence[tuple[int, int]]] = field(default_factory=list)
    gold_chars: list[list[tuple[int, int]]] = field(default_factory=list)

    def char_spans(self, start: np.ndarray, end: np.ndarray) -> list[tuple[int, int] | None]:
        """Token spans of each slot decoded to char spans in the post (None = null span)."""
        from tune_app.data.encode import decode_span

        return [decode_span(off, int(s), int(e))
                for off, s, e in zip(self.slot_offsets, start, end, strict=True)]


def predict(model: torch.nn.Module, tokenizer: Any, posts: Sequence[Post], cfg: AppConfig,
            device: torch.device) -> Predictions:
    """Run ``model`` over ``posts`` (in the given order), encoded and batched as the trial's
    validation was, through the same pass (``evaluation.forward.run_split``)."""
    from tune_app.data.loader import build_split

    names = criteria_names(cfg)
    split = build_split(list(posts), tokenizer, cfg, shuffle=False, seed=cfg.seed)
    gathered = run_split(model, split, width=len(names), device=device,
                         max_span_tokens=cfg.evaluation.max_span_tokens)
    slot_offsets: list[Sequence[tuple[int, int]]] = []
    gold_chars: list[list[tuple[int, int]]] = []
    for enc in split.encoded:
        for j in enc.criterion_ids:
            slot_offsets.append(enc.offsets)
            gold_chars.append(evidence_char_spans(posts[enc.post_index], names[j]))
    passed = {f.name: getattr(gathered, f.name) for f in dataclasses.fields(SplitPass)}
    return Predictions(**passed, post_ids=[p.post_id for p in posts], criteria=names, slot_offsets=slot_offsets,
                       gold_chars=gold_chars)


def load_split_posts(study_dir: Path, cfg: AppConfig, split: str) -> list[Post]:
    """The posts of ``split`` (``train``, ``validation`` or ``test``) of a study, sorted by
    post id (``train`` only feeds the report's baselines)."""
    from tune_app.data.redsm5 import load_splits
    from tune_app.study import SPLITS_FILE, load_posts_for

    ids = load_splits(study_dir / SPLITS_FILE)
    if split not in ("train", "validation", "test"):
        raise EvaluationError(f"split must be 'train', 'validation' or 'test', got {split!r}")
    wanted = sorted(ids[split])
    by_id = {p.post_id: p for p in load_posts_for(cfg, only_post_ids=set(wanted)).posts}
    return [by_id[i] for i in wanted]
