"""The RedSM5 schema: symptom names, file/column names, and the in-memory post record."""

from __future__ import annotations

from dataclasses import dataclass, field

#: The nine DSM-5 depression symptoms annotated in RedSM5, in a fixed order (label index).
SYMPTOMS: tuple[str, ...] = (
    "DEPRESSED_MOOD",
    "ANHEDONIA",
    "APPETITE_CHANGE",
    "SLEEP_ISSUES",
    "PSYCHOMOTOR",
    "FATIGUE",
    "WORTHLESSNESS",
    "COGNITIVE_ISSUES",
    "SUICIDAL_THOUGHTS",
)
#: Label of a post with no positive symptom annotation.
NO_SYMPTOMS = "NO_SYMPTOMS"

POSTS_FILE = "redsm5_posts.csv"
ANNOTATIONS_FILE = "redsm5_annotations.csv"
POSTS_COLUMNS: tuple[str, ...] = ("post_id", "text")
ANNOTATIONS_COLUMNS: tuple[str, ...] = (
    "post_id",
    "sentence_id",
    "sentence_text",
    "DSM5_symptom",
    "status",
    "explanation",
)
SPLIT_NAMES: tuple[str, ...] = ("train", "validation", "test")


@dataclass(frozen=True)
class EvidenceSpan:
    """One positive evidence sentence for one symptom, located in the post text.

    ``start``/``end`` are character offsets into ``Post.text`` (``text[start:end]``),
    or -1/-1 when the sentence could not be located in the post.
    """

    symptom: str
    sentence_id: str
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Post:
    """A post with its positive symptoms (subset of SYMPTOMS) and evidence spans."""

    post_id: str
    text: str
    symptoms: tuple[str, ...] = ()
    evidence: tuple[EvidenceSpan, ...] = field(default_factory=tuple)

    @property
    def has_symptoms(self) -> bool:
        return bool(self.symptoms)

#: Short neutral description of each criterion (the query segment of ``binary_pairs``
#: inputs). Lowercase ASCII words only, so a vocabulary built from
#: ``synthetic.SYNTHETIC_WORDS`` (which includes these words) covers them.
CRITERION_DESCRIPTIONS: dict[str, str] = {
    "DEPRESSED_MOOD": "depressed mood: feeling sad, empty or hopeless most of the day.",
    "ANHEDONIA": "loss of interest or pleasure in activities.",
    "APPETITE_CHANGE": "change in appetite or weight.",
    "SLEEP_ISSUES": "trouble sleeping or sleeping too much.",
    "PSYCHOMOTOR": "restlessness or being slowed down.",
    "FATIGUE": "fatigue or loss of energy.",
    "WORTHLESSNESS": "feelings of worthlessness or excessive guilt.",
    "COGNITIVE_ISSUES": "trouble thinking, concentrating or making decisions.",
    "SUICIDAL_THOUGHTS": "thoughts of death or suicide.",
    "NO_SYMPTOMS": "none of the depression symptoms.",
}


def evidence_char_spans(post: Post, symptom: str) -> list[tuple[int, int]]:
    """Annotated char spans of ``symptom`` in ``post`` (located ones, whitespace-trimmed)."""
    out = []
    for ev in post.evidence:
        if ev.symptom != symptom or ev.start < 0:
            continue
        start, end = ev.start, ev.end
        while start < end and post.text[start].isspace():
            start += 1
        while end > start and post.text[end - 1].isspace():
            end -= 1
        if end > start:
            out.append((start, end))
    return out
