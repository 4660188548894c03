"""Turn ``Post`` records into model inputs (token ids, labels, evidence token spans).

Two input formats: ``multi_label`` (one input per post, one slot per criterion) and
``binary_pairs`` (one ``[CLS] criterion [SEP] post [SEP]`` input per post and
criterion). Long posts are truncated or cut into overlapping windows. Evidence
spans are given as token indices into the input; 0/0 (the [CLS] position) is the
null span, used when the evidence is absent or not wholly inside the window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from tune_app.data.redsm5 import label_vector
from tune_app.data.schema import CRITERION_DESCRIPTIONS, NO_SYMPTOMS, SYMPTOMS, Post

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["CRITERION_DESCRIPTIONS", "Encoded", "collate", "decode_span", "encode_posts"]

InputFormat = Literal["multi_label", "binary_pairs"]
LongText = Literal["truncate", "sliding_window"]
_CHUNK = 512  # texts per tokenizer call


@dataclass
class Encoded:
    """One model input. The per-criterion lists all have length C (1 for pairs)."""

    input_ids: list[int]
    attention_mask: list[int]
    token_type_ids: list[int]
    criteria_labels: list[float]
    criterion_ids: list[int]
    evidence_start: list[int]
    evidence_end: list[int]
    offsets: list[tuple[int, int]]
    post_index: int


def _criteria(include_no_symptoms: bool) -> tuple[str, ...]:
    return SYMPTOMS + ((NO_SYMPTOMS,) if include_no_symptoms else ())


def _span_bounds(posts: Sequence[Post], tokenizer: PreTrainedTokenizerBase
                 ) -> list[dict[str, list[tuple[int, int]]]]:
    """Per post and symptom, the char bounds (first token start, last token end) of
    each located evidence span in the full, untruncated tokenization, by position."""
    out: list[dict[str, list[tuple[int, int]]]] = []
    for lo in range(0, len(posts), _CHUNK):
        chunk = posts[lo:lo + _CHUNK]
        enc = tokenizer([p.text for p in chunk], add_special_tokens=False,
                        return_offsets_mapping=True, truncation=False, verbose=False)
        for post, offsets in zip(chunk, enc["offset_mapping"], strict=True):
            bounds: dict[str, list[tuple[int, int]]] = {}
            for ev in sorted(post.evidence, key=lambda e: e.start):
                start, end = ev.start, ev.end
                if start < 0:
                    continue
                while start < end and post.text[start].isspace():
                    start += 1
                while end > start and post.text[end - 1].isspace():
                    end -= 1
                hit = [(s, e) for s, e in offsets if e > s and s < end and e > start]
                if hit:
                    bounds.setdefault(ev.symptom, []).append((hit[0][0], hit[-1][1]))
            out.append(bounds)
    return out


def _token_span(offsets: Sequence[tuple[int, int]], in_post: Sequence[bool],
                candidates: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """Token indices of the first candidate span wholly inside this input, else (0, 0)."""
    first_at: dict[int, int] = {}
    last_at: dict[int, int] = {}
    for t, ((s, e), ok) in enumerate(zip(offsets, in_post, strict=True)):
        if ok and e > s:
            first_at.setdefault(s, t)
            last_at[e] = t
    for s, e in candidates:
        if s in first_at and e in last_at and first_at[s] <= last_at[e]:
            return first_at[s], last_at[e]
    return 0, 0


def encode_posts(
    posts: Sequence[Post],
    tokenizer: PreTrainedTokenizerBase,
    *,
    input_format: InputFormat,
    max_length: int = 128,
    long_text: LongText = "truncate",
    stride: int = 32,
    include_no_symptoms: bool = True,
) -> list[Encoded]:
    """Encode posts with a fast tokenizer into ``Encoded`` inputs (no padding).

    ``multi_label``: one input per post (or per window), C = 9 (+1 NO_SYMPTOMS slot,
    whose evidence is always null). ``binary_pairs``: one input per (post, criterion),
    the criterion's description first (``truncation="only_second"``), C = 1.
    ``long_text="sliding_window"`` makes overlapping windows (``stride`` tokens of
    overlap), each with the post's labels; evidence is null in windows that do not
    wholly contain it. Offsets are char offsets into the post, (0, 0) for special
    tokens and the criterion segment.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("encode_posts needs a fast (Rust) tokenizer for offset mappings")
    if input_format not in ("multi_label", "binary_pairs"):
        raise ValueError(f"input_format must be 'multi_label' or 'binary_pairs', got {input_format!r}")
    if long_text not in ("truncate", "sliding_window"):
        raise ValueError(f"long_text must be 'truncate' or 'sliding_window', got {long_text!r}")
    criteria = _criteria(include_no_symptoms)
    labels = [label_vector(p, include_no_symptoms=include_no_symptoms) for p in posts]
    bounds = _span_bounds(posts, tokenizer)
    pairs = input_format == "binary_pairs"
    # items: (post index, criterion index or -1 for all criteria)
    items = [(i, c) for i in range(len(posts)) for c in range(len(criteria))] if pairs \
        else [(i, -1) for i in range(len(posts))]
    sliding = long_text == "sliding_window"
    post_seq = 1 if pairs else 0
    out: list[Encoded] = []
    for lo in range(0, len(items), _CHUNK):
        chunk = items[lo:lo + _CHUNK]
        texts = [posts[i].text for i, _ in chunk]
        kwargs = dict(truncation="only_second" if pairs else True, max_length=max_length,
                      return_offsets_mapping=True, return_token_type_ids=True,
                      return_overflowing_tokens=sliding, stride=stride if sliding else 0)
        if pairs:
            queries = [CRITERION_DESCRIPTIONS[criteria[c]] for _, c in chunk]
            enc = tokenizer(queries, texts, **kwargs)
        else:
            enc = tokenizer(texts, **kwargs)
        rows = enc["overflow_to_sample_mapping"] if sliding else range(len(chunk))
        for r, k in enumerate(rows):
            p_idx, c_idx = chunk[k]
            seq = enc.sequence_ids(r)
            in_post = [s == post_seq for s in seq]
            offsets = [(int(a), int(b)) if ok else (0, 0)
                       for (a, b), ok in zip(enc["offset_mapping"][r], in_post, strict=True)]
            slots = [c_idx] if pairs else list(range(len(criteria)))
            spans = [(0, 0) if criteria[c] == NO_SYMPTOMS
                     else _token_span(offsets, in_post, bounds[p_idx].get(criteria[c], ()))
                     for c in slots]
            ids = list(enc["input_ids"][r])
            tt = enc.get("token_type_ids")
            out.append(Encoded(
                input_ids=ids,
                attention_mask=list(enc["attention_mask"][r]),
                token_type_ids=list(tt[r]) if tt is not None else [0] * len(ids),
                criteria_labels=[labels[p_idx][c] for c in slots],
                criterion_ids=slots,
                evidence_start=[s for s, _ in spans],
                evidence_end=[e for _, e in spans],
                offsets=offsets,
                post_index=p_idx,
            ))
    return out


def collate(batch: Sequence[Encoded], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest input and stack it into tensors.

    Returns input_ids/attention_mask/token_type_ids [B, T] (long), criteria_labels
    [B, C] (float), criterion_ids/evidence_start/evidence_end [B, C] (long) and
    post_index [B] (long).
    """
    if not batch:
        raise ValueError("collate got an empty batch")
    widths = {len(b.criterion_ids) for b in batch}
    if len(widths) != 1:
        raise ValueError(f"inputs in one batch need the same number of criteria, got {widths}")
    t = max(len(b.input_ids) for b in batch)

    def pad(rows: list[list[int]], value: int) -> torch.Tensor:
        return torch.tensor([r + [value] * (t - len(r)) for r in rows], dtype=torch.long)

    return {
        "input_ids": pad([b.input_ids for b in batch], pad_token_id),
        "attention_mask": pad([b.attention_mask for b in batch], 0),
        "token_type_ids": pad([b.token_type_ids for b in batch], 0),
        "criteria_labels": torch.tensor([b.criteria_labels for b in batch], dtype=torch.float),
        "criterion_ids": torch.tensor([b.criterion_ids for b in batch], dtype=torch.long),
        "evidence_start": torch.tensor([b.evidence_start for b in batch], dtype=torch.long),
        "evidence_end": torch.tensor([b.evidence_end for b in batch], dtype=torch.long),
        "post_index": torch.tensor([b.post_index for b in batch], dtype=torch.long),
    }


def decode_span(offsets: Sequence[tuple[int, int]], start_token: int, end_token: int
                ) -> tuple[int, int] | None:
    """Char span ``(start, end)`` in the post for a token span; None for the null span
    (start_token 0), an invalid one (end < start, out of range) or non-post tokens."""
    if start_token <= 0 or end_token < start_token or end_token >= len(offsets):
        return None
    start, end = offsets[start_token][0], offsets[end_token][1]
    return (start, end) if end > start else None
