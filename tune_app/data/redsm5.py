"""Load RedSM5 (local CSVs or the Hub) into ``Post`` records; make and check splits.

The same code path reads the real data set and the synthetic one
(``tune_app.data.synthetic``): both are a folder with ``redsm5_posts.csv`` and
``redsm5_annotations.csv``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from tune_app.data.schema import (
    ANNOTATIONS_COLUMNS,
    ANNOTATIONS_FILE,
    NO_SYMPTOMS,
    POSTS_COLUMNS,
    POSTS_FILE,
    SPLIT_NAMES,
    SYMPTOMS,
    EvidenceSpan,
    Post,
)
from tune_app.hub import call_with_retry, hub_offline

logger = logging.getLogger(__name__)

DEFAULT_HUB_ID = "irlab-udc/redsm5"
#: Optional file next to the CSVs (or in the Hub repo) holding a provided split.
SPLITS_FILE = "splits.json"
LOCAL_HINT = (
    f"point data.path at a local copy of {POSTS_FILE} and {ANNOTATIONS_FILE} "
    "(data.source=local)"
)
SpecialCasePolicy = Literal["drop", "negative", "error"]


class DataError(ValueError):
    """The data could not be used; the message says what was wrong and what to do."""


@dataclass
class LoadedPosts:
    """Posts and provenance returned by :func:`load_posts`."""

    posts: list[Post]
    dataset_id: str
    revision: str | None
    provided_splits: dict[str, list[str]] | None = None
    dropped: dict[str, int] = field(default_factory=dict)
    unlocated_evidence: int = 0
    synthetic: bool = False


# --------------------------------------------------------------------------- reading


def _read_csv(path: Path, required: tuple[str, ...], where: str) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(
            f"{where}: missing file {path}. A RedSM5 folder needs {POSTS_FILE} and "
            f"{ANNOTATIONS_FILE}; {LOCAL_HINT}.")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False,
                         encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{where}: cannot parse {path} as UTF-8 CSV "
                        f"({type(exc).__name__}: {exc}).") from exc
    found = [str(c) for c in df.columns]
    missing = [c for c in required if c not in found]
    extra = [c for c in found if c not in required]
    if missing or extra:
        raise DataError(
            f"{where}: {path} has the wrong columns: required {list(required)}, "
            f"found {found} (missing {missing}, extra {extra}). Use the original "
            f"RedSM5 files or {LOCAL_HINT}.")
    if df.empty:
        raise DataError(f"{where}: {path} has a header but no rows (empty or truncated copy). Copy the "
                        f"complete file again, or {LOCAL_HINT}.")
    return df


def check_local_files(folder: Path) -> None:
    """Raise ``DataError`` naming the file when ``folder``'s posts or annotations CSV is missing,
    unreadable, has the wrong columns or no rows (the driver checks this before a study folder exists)."""
    where = f"local data at {folder}"
    _read_csv(folder / POSTS_FILE, POSTS_COLUMNS, where)
    _read_csv(folder / ANNOTATIONS_FILE, ANNOTATIONS_COLUMNS, where)


def _content_hash(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0")
        h.update(p.read_bytes())
    return f"sha256:{h.hexdigest()[:16]}"


def _hub_download(hub_id: str, filename: str, revision: str | None,
                  cache_dir: Path | None) -> Path:
    """Cache first, then (unless offline) the network."""
    from huggingface_hub import hf_hub_download

    def get(local_only: bool) -> Path:
        return Path(hf_hub_download(
            repo_id=hub_id, filename=filename, repo_type="dataset", revision=revision,
            cache_dir=str(cache_dir) if cache_dir else None, local_files_only=local_only))

    try:
        return get(True)
    except Exception:
        if hub_offline():
            raise
    return get(False)


def _snapshot_sha(path: Path) -> str | None:
    return path.parent.name if path.parent.parent.name == "snapshots" else None


def _fetch_hub(hub_id: str, revision: str | None, cache_dir: Path | None
               ) -> tuple[Path, Path, str | None, dict[str, list[str]] | None]:
    posts = call_with_retry(lambda: _hub_download(hub_id, POSTS_FILE, revision, cache_dir),
                            what="dataset", hub_id=hub_id, revision=revision,
                            local_hint=LOCAL_HINT)
    resolved = _snapshot_sha(posts) or revision
    annotations = call_with_retry(
        lambda: _hub_download(hub_id, ANNOTATIONS_FILE, resolved, cache_dir),
        what="dataset", hub_id=hub_id, revision=resolved, local_hint=LOCAL_HINT)
    splits: dict[str, list[str]] | None = None
    try:  # optional: the real RedSM5 has no official split
        splits = load_splits(_hub_download(hub_id, SPLITS_FILE, resolved, cache_dir))
    except DataError:
        raise
    except Exception:  # noqa: BLE001 - absent or unreachable: no provided split
        splits = None
    return posts, annotations, resolved, splits


# ------------------------------------------------------------------ locating spans


def _normalise(text: str) -> tuple[str, list[int]]:
    """Lowercase, collapse whitespace runs; return the string and each char's origin."""
    out: list[str] = []
    origin: list[int] = []
    prev_space = False
    for i, ch in enumerate(text):
        if ch.isspace():
            if not prev_space:
                out.append(" ")
                origin.append(i)
            prev_space = True
            continue
        prev_space = False
        low = ch.lower()
        out.extend(low)
        origin.extend([i] * len(low))
    return "".join(out), origin


def locate_sentence(text: str, sentence: str) -> tuple[int, int] | None:
    """Character span of ``sentence`` in ``text``: exact match first, then a
    whitespace-normalised, case-insensitive match mapped back to original offsets."""
    if not sentence.strip():
        return None
    i = text.find(sentence)
    if i >= 0:
        return i, i + len(sentence)
    norm_text, origin = _normalise(text)
    norm_sent = _normalise(sentence.strip())[0]
    j = norm_text.find(norm_sent)
    if j < 0:
        return None
    return origin[j], origin[j + len(norm_sent) - 1] + 1


# ------------------------------------------------------------------------ loading


def _parse_status(value: str, sentence_id: str, where: str) -> int:
    try:
        status = int(float(value))
    except ValueError:
        status = -1
    if status not in (0, 1):
        raise DataError(f"{where}: annotation {sentence_id!r} has status {value!r}; "
                        "status must be 0 or 1.")
    return status


def _build_posts(posts_df: pd.DataFrame, ann_df: pd.DataFrame, *, where: str,
                 policy: SpecialCasePolicy, only_post_ids: Collection[str] | None
                 ) -> tuple[list[Post], dict[str, int], int]:
    dup = posts_df["post_id"][posts_df["post_id"].duplicated()].tolist()
    if dup:
        raise DataError(f"{where}: duplicate post_id in {POSTS_FILE}: {sorted(set(dup))[:10]}.")
    texts: dict[str, str] = dict(zip(posts_df["post_id"], posts_df["text"], strict=True))
    if only_post_ids is not None:
        wanted = set(only_post_ids)
        unknown = sorted(wanted - texts.keys())
        if unknown:
            raise DataError(
                f"{where}: {len(unknown)} requested post ids are not in the data set, e.g. "
                f"{unknown[:5]}: the splits file does not belong to this data set/revision; "
                "re-create the splits (make_splits) for it.")
        texts = {k: v for k, v in texts.items() if k in wanted}

    special: Counter[str] = Counter()
    unknown_rows = 0
    unlocated = 0
    symptoms: dict[str, set[str]] = defaultdict(set)
    evidence: dict[str, dict[tuple[str, str], EvidenceSpan]] = defaultdict(dict)
    for pid, sid, sentence, symptom, status_s in zip(
            ann_df["post_id"], ann_df["sentence_id"], ann_df["sentence_text"],
            ann_df["DSM5_symptom"], ann_df["status"], strict=True):
        if pid not in texts:
            if only_post_ids is None:
                unknown_rows += 1
            continue
        status = _parse_status(status_s, sid, where)
        symptom = symptom.strip()
        if symptom not in SYMPTOMS:
            special[symptom] += 1
            continue
        if status != 1 or (symptom, sid) in evidence[pid]:
            continue
        symptoms[pid].add(symptom)
        span = locate_sentence(texts[pid], sentence)
        if span is None:
            unlocated += 1
            span = (-1, -1)
        evidence[pid][(symptom, sid)] = EvidenceSpan(symptom, sid, span[0], span[1], sentence)

    if special and policy == "error":
        raise DataError(
            f"{where}: DSM5_symptom values outside the nine symptoms: {dict(special)} "
            "(rows per value). Set data.special_case_policy to 'drop' or 'negative'.")
    order = {s: i for i, s in enumerate(SYMPTOMS)}
    posts: list[Post] = []
    for pid in sorted(texts):
        spans = sorted(evidence[pid].values(),
                       key=lambda e: (e.start < 0, e.start, order[e.symptom], e.sentence_id))
        posts.append(Post(pid, texts[pid], tuple(sorted(symptoms[pid], key=order.__getitem__)),
                          tuple(spans)))
    dropped = {"special_case_rows": sum(special.values()), "unknown_post_rows": unknown_rows}
    if unlocated:
        logger.warning("%s: %d evidence sentences not found in their post (span -1/-1)",
                       where, unlocated)
    logger.info(
        "%s: %d posts (%d without symptoms); special-case rows %s -> %s; annotation rows "
        "for unknown posts dropped: %d; unlocated evidence: %d",
        where, len(posts), sum(not p.symptoms for p in posts), dict(special) or 0, policy,
        unknown_rows, unlocated)
    return posts, dropped, unlocated


def load_posts(
    *,
    source: Literal["local", "hub"],
    path: Path | None = None,
    hub_id: str = DEFAULT_HUB_ID,
    revision: str | None = None,
    special_case_policy: SpecialCasePolicy = "drop",
    cache_dir: Path | None = None,
    only_post_ids: Collection[str] | None = None,
) -> LoadedPosts:
    """Load RedSM5 posts with their symptoms and located evidence spans.

    ``source="local"`` reads the two CSVs from the folder ``path``; ``source="hub"``
    downloads them from the dataset repo ``hub_id`` at ``revision`` (cache first,
    retried; offline/gated/missing raise ``HubAccessError`` saying what to do).
    Annotation labels outside SYMPTOMS follow ``special_case_policy``: "drop" ignores
    the rows, "negative" treats them as no symptom (both counted in ``dropped``), "error"
    raises ``DataError``. ``only_post_ids`` keeps only those posts (unknown ids raise).
    Posts come sorted by post_id.
    """
    if special_case_policy not in ("drop", "negative", "error"):
        raise DataError(f"special_case_policy must be 'drop', 'negative' or 'error', "
                        f"got {special_case_policy!r}.")
    synthetic = False
    resolved: str | None
    if source == "local":
        if path is None:
            raise DataError(f"data.source=local needs data.path: a folder holding "
                            f"{POSTS_FILE} and {ANNOTATIONS_FILE}.")
        folder = Path(path).expanduser()
        where = f"local data at {folder}"
        posts_path, ann_path = folder / POSTS_FILE, folder / ANNOTATIONS_FILE
        posts_df = _read_csv(posts_path, POSTS_COLUMNS, where)
        ann_df = _read_csv(ann_path, ANNOTATIONS_COLUMNS, where)
        resolved = _content_hash(posts_path, ann_path)
        dataset_id = f"local:{folder.resolve()}"
        provided = load_splits(folder / SPLITS_FILE) if (folder / SPLITS_FILE).is_file() else None
        info = folder / "dataset_info.json"
        if info.is_file():
            try:
                synthetic = bool(json.loads(info.read_text(encoding="utf-8")).get("synthetic"))
            except (ValueError, AttributeError):
                synthetic = False
    elif source == "hub":
        posts_path, ann_path, resolved, provided = _fetch_hub(hub_id, revision, cache_dir)
        where = f"hub dataset {hub_id}@{resolved or 'main'}"
        posts_df = _read_csv(posts_path, POSTS_COLUMNS, where)
        ann_df = _read_csv(ann_path, ANNOTATIONS_COLUMNS, where)
        dataset_id = hub_id
    else:
        raise DataError(f"data.source must be 'local' or 'hub', got {source!r}.")
    posts, dropped, unlocated = _build_posts(posts_df, ann_df, where=where,
                                             policy=special_case_policy,
                                             only_post_ids=only_post_ids)
    return LoadedPosts(posts, dataset_id, resolved, provided, dropped, unlocated, synthetic)


# ------------------------------------------------------------------------- labels


def label_vector(post: Post, *, include_no_symptoms: bool) -> list[float]:
    """Multi-hot labels in SYMPTOMS order, plus a NO_SYMPTOMS entry last if asked."""
    vec = [1.0 if s in post.symptoms else 0.0 for s in SYMPTOMS]
    if include_no_symptoms:
        vec.append(0.0 if post.symptoms else 1.0)
    return vec


# ------------------------------------------------------------------------- splits


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise DataError(f"split ratios must be three non-negative numbers (train, validation, "
                        f"test) summing to 1, got {tuple(ratios)}.")
    return float(ratios[0]), float(ratios[1]), float(ratios[2])


def _stratum(post: Post, freq: Mapping[str, int]) -> str:
    if not post.symptoms:
        return NO_SYMPTOMS
    return min(post.symptoms, key=lambda s: (freq[s], SYMPTOMS.index(s)))


def _targets(n: int, ratios: tuple[float, float, float]) -> list[int]:
    """Largest-remainder rounding: counts sum to n, each within 1 of n * ratio."""
    raw = [n * r for r in ratios]
    counts = [int(x) for x in raw]
    by_remainder = sorted(range(3), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def make_splits(posts: Sequence[Post], *, ratios: tuple[float, float, float] = (0.7, 0.15, 0.15),
                seed: int = 42) -> dict[str, list[str]]:
    """Deterministic, label-stratified train/validation/test split of post ids.

    Strata are the post's rarest positive symptom (or NO_SYMPTOMS). Each stratum is
    shuffled with ``seed``; posts are then dealt to the split with the largest
    shortfall against its ratio, so every stratum is spread in proportion and the
    split sizes are within one post of ``len(posts) * ratio``.
    """
    r = _check_ratios(ratios)
    ids = [p.post_id for p in posts]
    if len(set(ids)) != len(ids):
        dup = sorted(k for k, v in Counter(ids).items() if v > 1)
        raise DataError(f"duplicate post ids, cannot split: {dup[:10]}.")
    freq = Counter(s for p in posts for s in p.symptoms)
    strata: dict[str, list[str]] = defaultdict(list)
    for p in posts:
        strata[_stratum(p, freq)].append(p.post_id)
    rng = random.Random(seed)
    order: list[str] = []
    for name in sorted(strata, key=lambda k: (len(strata[k]), k)):
        members = sorted(strata[name])
        rng.shuffle(members)
        order.extend(members)
    n = len(order)
    targets = _targets(n, r)
    assigned = [0, 0, 0]
    out: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    for k, pid in enumerate(order):
        open_ = [i for i in range(3) if assigned[i] < targets[i]]
        best = max(open_, key=lambda i: (targets[i] * (k + 1) / n - assigned[i], -i))
        assigned[best] += 1
        out[SPLIT_NAMES[best]].append(pid)
    return {name: sorted(v) for name, v in out.items()}


def check_disjoint(split_ids: Mapping[str, Sequence[str]]) -> None:
    """Raise ``DataError`` naming every post id that is in more than one split."""
    where: dict[str, list[str]] = defaultdict(list)
    for split, ids in split_ids.items():
        for pid in ids:
            where[pid].append(split)
    bad = {pid: s for pid, s in where.items() if len(s) > 1}
    if bad:
        shown = "; ".join(f"{pid} in {', '.join(s)}" for pid, s in sorted(bad.items())[:20])
        more = f" (and {len(bad) - 20} more)" if len(bad) > 20 else ""
        raise DataError(f"splits overlap: {len(bad)} post ids are in more than one split: "
                        f"{shown}{more}. Re-create the splits with make_splits or fix the "
                        "splits file.")


def save_splits(split_ids: Mapping[str, Sequence[str]], path: Path, *, dataset_id: str,
                revision: str | None, seed: int, ratios: Sequence[float]) -> None:
    """Write the splits (and what they were made from) as JSON, atomically."""
    check_disjoint(split_ids)
    payload: dict[str, Any] = {name: sorted(split_ids[name]) for name in SPLIT_NAMES}
    payload["meta"] = {"dataset_id": dataset_id, "revision": revision, "seed": seed,
                       "ratios": list(ratios),
                       "counts": {name: len(split_ids[name]) for name in SPLIT_NAMES}}
    from tune_app.study import write_text_atomic

    write_text_atomic(Path(path), json.dumps(payload, indent=1) + "\n")


def load_splits(path: Path) -> dict[str, list[str]]:
    """Read a splits JSON (``{"train": [...], "validation": [...], "test": [...]}``,
    optionally nested under ``"splits"``); validate keys, types and disjointness."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"splits file {path} does not exist; create it with "
                        "make_splits/save_splits.") from None
    except ValueError as exc:
        raise DataError(f"splits file {path} is not valid JSON: {exc}.") from exc
    if isinstance(data, dict) and isinstance(data.get("splits"), dict):
        data = data["splits"]
    if not isinstance(data, dict):
        raise DataError(f"splits file {path} must hold a JSON object with keys "
                        f"{list(SPLIT_NAMES)}, found {type(data).__name__}.")
    missing = [k for k in SPLIT_NAMES if k not in data]
    if missing:
        raise DataError(f"splits file {path}: required keys {list(SPLIT_NAMES)}, found "
                        f"{sorted(data)} (missing {missing}).")
    out: dict[str, list[str]] = {}
    for name in SPLIT_NAMES:
        ids = data[name]
        if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
            raise DataError(f"splits file {path}: '{name}' must be a list of post id strings.")
        out[name] = ids
    check_disjoint(out)
    return out

