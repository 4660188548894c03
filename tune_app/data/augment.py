"""Evidence-only augmentation of training posts with TextAttack.

Only the evidence sentences of a post change: each distinct located span
``text[start:end]`` of a chosen post is rewritten once, spliced back, and every
``EvidenceSpan`` is moved to its new offsets (spans sharing a sentence move
together). All other characters of the post are kept byte for byte; symptoms and
span order are unchanged. Spans that overlap a different span, and unlocated ones
(-1/-1), are never rewritten.

Randomness: one ``random.Random(seed)`` draws, for every post in order, a number
(the post is chosen when it is below ``probability``) and a post seed; each span's
TextAttack call runs with ``random``/``numpy`` seeded from the post seed and the
global RNG states restored afterwards. So the result depends only on the posts,
method, probability and seed, and a higher probability augments a superset of posts.

TextAttack (~10 s, ~600 MB) is imported only when an augmenter is first built.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tune_app.config import AUGMENT_METHODS
from tune_app.data.nltk_setup import INSTALL_HINT, import_textattack, missing_resources
from tune_app.data.schema import EvidenceSpan, Post

logger = logging.getLogger(__name__)

#: Methods that need WordNet (``synonym``: WordNet synonym swap; ``insert``: insert a
#: WordNet synonym of a word of the sentence).
WORDNET_METHODS: frozenset[str] = frozenset({"synonym", "insert"})
#: Methods that can never run here, and why.
UNAVAILABLE_METHODS: dict[str, str] = {
    "back_translation": (
        "augment.method=back_translation needs MarianMT translation models "
        "(e.g. Helsinki-NLP/opus-mt-en-de and opus-mt-de-en) downloaded from the Hugging Face "
        "Hub, which this offline setup cannot reach and does not ship; choose one of "
        "synonym, insert, swap, char_perturb, or set augment.enabled=false"
    ),
}
#: Fraction of a sentence's words TextAttack changes (at least one word).
PCT_WORDS_TO_SWAP = 0.2

#: ``(evidence text, seed) -> augmented text``; must be deterministic in its arguments.
SpanAugmenter = Callable[[str, int], str]


@dataclass(frozen=True)
class SpanChange:
    """One distinct evidence span of a post before and after augmentation."""

    symptoms: tuple[str, ...]
    sentence_ids: tuple[str, ...]
    original_start: int
    original_end: int
    original_text: str
    augmented_start: int
    augmented_end: int
    augmented_text: str

    @property
    def changed(self) -> bool:
        return self.original_text != self.augmented_text


@dataclass(frozen=True)
class AugmentationRecord:
    """What augmentation did to one training post (one line of ``augmentation.jsonl``)."""

    post_id: str
    method: str
    seed: int
    post_seed: int
    spans: tuple[SpanChange, ...]

    @property
    def changed(self) -> bool:
        return any(s.changed for s in self.spans)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["changed"] = self.changed
        for span, change in zip(out["spans"], self.spans, strict=True):
            span["changed"] = change.changed
        return out


# ----------------------------------------------------------------- availability


def check_method_available(method: str) -> None:
    """Raise ``ValueError`` saying what is needed if ``method`` cannot run here.

    Cheap (file checks only; never imports TextAttack): for config validation.
    """
    if method not in AUGMENT_METHODS:
        raise ValueError(f"augment.method={method!r} is not allowed; allowed values: "
                         f"{', '.join(AUGMENT_METHODS)}")
    if method in UNAVAILABLE_METHODS:
        raise ValueError(UNAVAILABLE_METHODS[method])
    import importlib.util

    if importlib.util.find_spec("textattack") is None:
        raise ValueError(f"augment.method={method} needs the textattack package "
                         "(a project dependency): reinstall with scripts/install.sh")
    missing = missing_resources(wordnet=method in WORDNET_METHODS)
    if missing:
        needs = "TextAttack's offline data and WordNet" if method in WORDNET_METHODS \
            else "TextAttack's offline data"
        raise ValueError(f"augment.method={method} needs {needs}, missing: "
                         f"{'; '.join(missing)}; {INSTALL_HINT}")


# ------------------------------------------------------------------- augmenters

_AUGMENTERS: dict[str, SpanAugmenter] = {}


def _build_textattack_augmenter(method: str) -> Any:
    """A TextAttack ``Augmenter`` for ``method`` (TextAttack's transformations and
    constraints) that proposes one edit per step, whose candidates do not depend on
    ``PYTHONHASHSEED`` (WordNet synonyms sorted, cached per word), and that never
    calls ``nltk.download``."""
    try:
        import_textattack(wordnet=method in WORDNET_METHODS)
    except RuntimeError as exc:
        raise ValueError(str(exc)) from exc
    from nltk.corpus import wordnet
    from textattack.augmentation import Augmenter
    from textattack.constraints.pre_transformation import (
        RepeatModification,
        StopwordModification,
    )
    from textattack.transformations import (
        CompositeTransformation,
        WordInnerSwapRandom,
        WordInsertionRandomSynonym,
        WordSwapNeighboringCharacterSwap,
        WordSwapRandomCharacterDeletion,
        WordSwapRandomCharacterInsertion,
        WordSwapRandomCharacterSubstitution,
        WordSwapWordNet,
    )

    def one_edit(cls: type) -> type:
        """``cls`` proposing one edit per step: a random word index (among those the
        constraints allow) and a random candidate there, instead of building every
        candidate sentence (TextAttack's cost) for the Augmenter to pick one."""

        class OneEdit(cls):
            def _get_transformations(self, current_text: Any, indices: Any) -> list[Any]:
                order = sorted(indices)
                random.shuffle(order)
                for i in order:
                    out = super()._get_transformations(current_text, [i])
                    if out:
                        return [random.choice(out)]
                return []

        OneEdit.__name__ = OneEdit.__qualname__ = f"OneEdit{cls.__name__}"
        return OneEdit

    class SortedWordSwapWordNet(WordSwapWordNet):
        def __init__(self) -> None:  # the parent calls nltk.download("omw-1.4")
            self.language = "eng"
            self._cache: dict[str, list[str]] = {}

        def _get_transformations(self, current_text: Any, indices: Any) -> list[Any]:
            # One of all (word, synonym) candidates, uniformly, as TextAttack's Augmenter
            # would pick, but only that sentence is built.
            words = current_text.words
            options = [(i, r) for i in sorted(indices)
                       for r in self._get_replacement_words(words[i]) if r != words[i]]
            if not options:
                return []
            i, r = random.choice(options)
            return [current_text.replace_word_at_index(i, r)]

        def _get_replacement_words(self, word: str, random: bool = False) -> list[str]:
            if word not in self._cache:
                self._cache[word] = sorted(super()._get_replacement_words(word, random))
            return list(self._cache[word])

    class SortedWordInsertionRandomSynonym(one_edit(WordInsertionRandomSynonym)):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self._cache: dict[str, list[str]] = {}

        def _get_synonyms(self, word: str) -> list[str]:
            if word not in self._cache:
                self._cache[word] = sorted(super()._get_synonyms(word))
            return list(self._cache[word])

    if method in WORDNET_METHODS:
        wordnet.ensure_loaded()
    transformation: Any
    if method == "synonym":
        transformation = SortedWordSwapWordNet()
    elif method == "insert":
        transformation = SortedWordInsertionRandomSynonym()
    elif method == "swap":
        transformation = one_edit(WordInnerSwapRandom)()
    elif method == "char_perturb":
        transformation = CompositeTransformation([one_edit(cls)() for cls in (
            WordSwapNeighboringCharacterSwap, WordSwapRandomCharacterSubstitution,
            WordSwapRandomCharacterDeletion, WordSwapRandomCharacterInsertion)])
    else:  # pragma: no cover - check_method_available ran first
        raise ValueError(f"no TextAttack augmenter for method {method!r}")
    return Augmenter(transformation, constraints=[RepeatModification(), StopwordModification()],
                     pct_words_to_swap=PCT_WORDS_TO_SWAP, transformations_per_example=1)


def get_span_augmenter(method: str) -> SpanAugmenter:
    """The (cached) TextAttack span augmenter of ``method``; imports TextAttack on first use."""
    if method not in _AUGMENTERS:
        check_method_available(method)
        augmenter = _build_textattack_augmenter(method)

        def augment(text: str, seed: int) -> str:
            import numpy as np

            py_state, np_state = random.getstate(), np.random.get_state()
            try:
                random.seed(seed)
                np.random.seed(seed % 2**32)
                out = augmenter.augment(text)
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
            return str(out[0]) if out else text

        _AUGMENTERS[method] = augment
    return _AUGMENTERS[method]


# --------------------------------------------------------------------- splicing


def _augmentable_ranges(post: Post) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(distinct non-empty located ranges that overlap no other range, the overlapping ones).

    Empty ranges take part in the overlap test (one strictly inside a sentence blocks it).
    """
    n = len(post.text)
    ranges = sorted({(e.start, e.end) for e in post.evidence if 0 <= e.start <= e.end <= n})
    clusters: list[list[tuple[int, int]]] = []
    cluster_end = -1
    for r in ranges:
        if clusters and r[0] < cluster_end:
            clusters[-1].append(r)
            cluster_end = max(cluster_end, r[1])
        else:
            clusters.append([r])
            cluster_end = r[1]
    single = [c[0] for c in clusters if len(c) == 1 and c[0][0] < c[0][1]]
    overlapping = [r for c in clusters if len(c) > 1 for r in c]
    return single, overlapping


def splice_post(post: Post, augment: Callable[[str], str], *, method: str = "custom",
                seed: int = 0, post_seed: int = 0) -> tuple[Post, AugmentationRecord | None]:
    """Rewrite each augmentable evidence span of ``post`` with ``augment`` (once per
    distinct span), splice it back and move every span's offsets.

    Returns the post unchanged and ``None`` when it has nothing to augment. An empty
    or whitespace-only result keeps the original sentence.
    """
    ranges, overlapping = _augmentable_ranges(post)
    if overlapping:
        logger.debug("post %s: overlapping evidence spans %s left unaugmented",
                     post.post_id, overlapping)
    if not ranges:
        return post, None
    text = post.text
    pieces: list[str] = []
    moved: dict[tuple[int, int], tuple[int, int, str]] = {}
    deltas: list[tuple[int, int]] = []  # (original end, length change)
    cursor = shift = 0
    for start, end in ranges:
        original = text[start:end]
        new = augment(original)
        if not new.strip():
            new = original
        pieces.append(text[cursor:start])
        pieces.append(new)
        cursor = end
        moved[(start, end)] = (start + shift, start + shift + len(new), new)
        shift += len(new) - len(original)
        deltas.append((end, len(new) - len(original)))
    pieces.append(text[cursor:])
    new_text = "".join(pieces)

    def move(pos: int) -> int:
        return pos + sum(d for end, d in deltas if end <= pos)

    evidence: list[EvidenceSpan] = []
    for ev in post.evidence:
        if (ev.start, ev.end) in moved:
            s, e, seg = moved[(ev.start, ev.end)]
            evidence.append(replace(ev, start=s, end=e, text=seg))
        elif 0 <= ev.start <= ev.end <= len(text):
            evidence.append(replace(ev, start=move(ev.start), end=move(ev.end)))
        else:
            evidence.append(ev)
    changes = []
    for start, end in ranges:
        owners = [ev for ev in post.evidence if (ev.start, ev.end) == (start, end)]
        s, e, seg = moved[(start, end)]
        changes.append(SpanChange(
            symptoms=tuple(ev.symptom for ev in owners),
            sentence_ids=tuple(ev.sentence_id for ev in owners),
            original_start=start, original_end=end, original_text=text[start:end],
            augmented_start=s, augmented_end=e, augmented_text=seg))
    record = AugmentationRecord(post.post_id, method, seed, post_seed, tuple(changes))
    return replace(post, text=new_text, evidence=tuple(evidence)), record


def _seeded(fn: SpanAugmenter, post_seed: int) -> Callable[[str], str]:
    """``fn`` with a fresh seed per span, drawn from the post seed."""
    rng = random.Random(post_seed)
    return lambda text: fn(text, rng.getrandbits(32))


def augment_posts(posts: Sequence[Post], *, method: str, probability: float, seed: int,
                  augmenter: SpanAugmenter | None = None
                  ) -> tuple[list[Post], list[AugmentationRecord]]:
    """Augment the evidence of about ``probability`` of ``posts`` (training split only).

    ``augmenter`` replaces the TextAttack one of ``method`` (tests, benchmarks). With
    probability 0 the posts come back as they are and TextAttack is never imported.
    Returns the posts (same order, same ids) and one record per augmented post.
    """
    if isinstance(probability, bool) or not 0.0 <= float(probability) <= 1.0:
        raise ValueError(f"augment.probability={probability!r} must be in [0, 1]")
    if probability == 0 or not posts:
        return list(posts), []
    fn = augmenter or get_span_augmenter(method)
    rng = random.Random(seed)
    out: list[Post] = []
    records: list[AugmentationRecord] = []
    for post in posts:
        chosen = rng.random() < probability
        post_seed = rng.getrandbits(32)
        if not chosen:
            out.append(post)
            continue
        new_post, record = splice_post(post, _seeded(fn, post_seed), method=method,
                                       seed=seed, post_seed=post_seed)
        out.append(new_post)
        if record is not None:
            records.append(record)
    return out, records


# ----------------------------------------------------------------------- output


def summarise(records: Sequence[AugmentationRecord], num_posts: int) -> dict[str, Any]:
    """Counts for logs/reports: posts augmented and changed, spans changed."""
    spans = [s for r in records for s in r.spans]
    return {"posts": num_posts, "posts_augmented": len(records),
            "posts_changed": sum(r.changed for r in records),
            "spans_augmented": len(spans), "spans_changed": sum(s.changed for s in spans)}


def write_records(path: Path, records: Sequence[AugmentationRecord]) -> Path:
    """Write ``records`` as JSON lines to ``path`` atomically (e.g. ``augmentation.jsonl``)."""
    from tune_app.study import write_text_atomic

    path = Path(path)
    write_text_atomic(path, "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records))
    return path


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of an ``augmentation.jsonl`` as dicts (for reports)."""
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
