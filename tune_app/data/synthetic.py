"""A small, fully synthetic stand-in for RedSM5, written in the real file format.

Posts are built from templated sentences (never real posts): neutral filler
sentences, distractor sentences that reuse symptom words in a harmless sense, and
one evidence sentence per symptom of the post, drawn from symptom-specific
templates (about 5% use weaker wording). The output is deterministic byte for byte
for a given ``(num_posts, seed)``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
import re
import shutil
import tempfile
from pathlib import Path

from tune_app.data.schema import (
    ANNOTATIONS_COLUMNS,
    ANNOTATIONS_FILE,
    CRITERION_DESCRIPTIONS,
    POSTS_COLUMNS,
    POSTS_FILE,
    SYMPTOMS,
)

logger = logging.getLogger(__name__)

#: Bump when the generated content changes for a given (num_posts, seed).
GENERATOR_VERSION = "1"
#: Annotation label used for rows outside the nine symptoms (exercises the policy).
SPECIAL_CASE = "SPECIAL_CASE"

#: Relative frequency of each symptom (posts per symptom in the real RedSM5).
SYMPTOM_WEIGHTS: dict[str, int] = {
    "DEPRESSED_MOOD": 328,
    "ANHEDONIA": 124,
    "APPETITE_CHANGE": 44,
    "SLEEP_ISSUES": 102,
    "PSYCHOMOTOR": 35,
    "FATIGUE": 124,
    "WORTHLESSNESS": 311,
    "COGNITIVE_ISSUES": 59,
    "SUICIDAL_THOUGHTS": 165,
}
#: Sampling weights: the real frequencies flattened a little (power 0.7) so the
#: rarest symptom still has a handful of posts in a 240-post set; order kept.
_SAMPLING_WEIGHTS: dict[str, float] = {k: v**0.7 for k, v in SYMPTOM_WEIGHTS.items()}
NO_SYMPTOM_RATE = 0.25
WEAK_RATE = 0.05
#: Posts get extra filler sentences until they have at least this many words.
MIN_WORDS = 20

_STRONG: dict[str, tuple[str, ...]] = {
    # Each core holds one of two or three anchor words of its symptom.
    "DEPRESSED_MOOD": (
        "i feel so sad and empty all the time",
        "i have been crying every day for no reason",
        "i feel sad and hopeless",
        "i am so depressed i can barely function",
        "i feel depressed and miserable most days",
        "i keep crying and feel so down",
    ),
    "ANHEDONIA": (
        "nothing brings me joy anymore",
        "i lost interest in everything i used to love",
        "i don't enjoy my hobbies anymore",
        "i have no interest in gaming or music now",
        "i can't enjoy anything anymore",
        "even my favorite things bring me no joy",
    ),
    "APPETITE_CHANGE": (
        "i barely eat anymore and lost a lot of weight",
        "i have no appetite at all",
        "i eat junk all night and can't stop",
        "i gained so much weight from stress",
        "food makes me sick so i don't eat",
        "my appetite is gone",
    ),
    "SLEEP_ISSUES": (
        "i can't sleep at night",
        "i am awake at three in the morning every night",
        "my insomnia is getting worse",
        "i sleep fourteen hours and still want to stay in bed",
        "i lie awake for hours",
        "i barely sleep anymore",
    ),
    "PSYCHOMOTOR": (
        "i feel restless and can't sit still",
        "i am so restless i pace around my room for hours",
        "my body feels slowed down like i am moving through mud",
        "people say my speech is slowed down",
        "i keep fidgeting and my hands won't stop shaking",
        "i am restless and fidgeting all day",
    ),
    "FATIGUE": (
        "i am exhausted all the time",
        "i have no energy to do anything",
        "even a shower drains all my energy",
        "i feel drained every single day",
        "i am exhausted even after resting",
        "getting out of bed takes all my energy",
    ),
    "WORTHLESSNESS": (
        "i feel worthless and useless",
        "i am a worthless failure",
        "everything is my fault and i feel so guilty",
        "i am a failure and a burden to everyone",
        "i feel guilty all the time",
        "i feel worthless and not good enough for anyone",
    ),
    "COGNITIVE_ISSUES": (
        "i can't concentrate on anything",
        "my mind is foggy and i forget things constantly",
        "i can't focus at work or make decisions",
        "i try to read but i can't concentrate",
        "my brain feels foggy and i can't think clearly",
        "i can't focus on anything",
    ),
    "SUICIDAL_THOUGHTS": (
        "i keep thinking about ending my life",
        "i want to die",
        "i have been having suicidal thoughts",
        "i think about suicide every day",
        "sometimes i just want to die",
        "i have suicidal thoughts most nights",
    ),
}

_WEAK: dict[str, tuple[str, ...]] = {
    "DEPRESSED_MOOD": ("things have felt kind of heavy", "my mood has been off"),
    "ANHEDONIA": ("stuff i liked feels kind of meh", "i skip the things i used to do"),
    "APPETITE_CHANGE": ("my eating has been weird", "my clothes fit differently now"),
    "SLEEP_ISSUES": ("nights have been rough", "my schedule is a mess"),
    "PSYCHOMOTOR": ("i feel kind of jittery", "i move around a lot more than before"),
    "FATIGUE": ("i have been a bit low on steam", "the days feel long"),
    "WORTHLESSNESS": ("i am not sure i matter much", "others do everything better than me"),
    "COGNITIVE_ISSUES": ("my head is not really there", "i keep losing track of things"),
    "SUICIDAL_THOUGHTS": ("i don't see much point in going on", "i think about not being here"),
}

_EVIDENCE_OPENERS = ("", "", "", "honestly ", "lately ", "these days ", "for weeks now ",
                     "to be honest ", "recently ")
_EVIDENCE_SUFFIXES = ("", "", "", " and i don't know why", " and it scares me",
                      " no matter what i do", " and i hate it")
_FILLER_OPENERS = ("", "", "", "", "so ", "anyway ", "also ", "yesterday ", "oh and ")

_FILLERS: tuple[str, ...] = (
    "i went to the store with my sister",
    "my cat knocked a cup off the table",
    "work was busy today",
    "i watched a movie with my roommate",
    "we had pizza for dinner",
    "the weather has been cold and rainy",
    "i need to fix my bike",
    "my friend called me this morning",
    "i started a new class this week",
    "the bus was late again",
    "i cleaned my room on sunday",
    "my mom wants me to visit next month",
    "i have an exam on friday",
    "the neighbors are loud",
    "i bought a new phone",
    "my dog loves the park",
    "i cooked pasta last night",
    "my boss asked me to stay late",
    "we played cards with some friends",
    "i am thinking about changing jobs",
    "my car needs new tires",
    "i finished a book about history",
    "the coffee shop near my house closed",
    "i moved to a new city last year",
    "my brother got married in june",
    "i have been learning to play guitar",
    "it snowed a lot this weekend",
    "my laptop keeps crashing",
    "i walked to school in the rain",
    "we went to the beach in the summer",
    "my roommate painted the kitchen green",
    "i signed up for a gym near work",
    "our team lost the game on saturday",
    "i have a dentist appointment tomorrow",
    "my grandma sent me a letter",
    "the train was packed this morning",
    "i am saving money for a trip",
    "we adopted a kitten last month",
    "i got a haircut on tuesday",
    "my phone screen cracked",
)

#: Sentences that reuse symptom words in a harmless sense, with the symptom an
#: annotator looked at and rejected (status 0).
_DISTRACTORS: tuple[tuple[str, str], ...] = (
    ("i was tired after the long hike but it was fun", "FATIGUE"),
    ("the ending of the movie was sad but beautiful", "DEPRESSED_MOOD"),
    ("i slept in on saturday and felt great", "SLEEP_ISSUES"),
    ("we ate a huge dinner at my aunt's house", "APPETITE_CHANGE"),
    ("i forgot my keys at home again", "COGNITIVE_ISSUES"),
    ("my friend felt guilty about missing my party", "WORTHLESSNESS"),
    ("i could not sit still before the concert because i was excited", "PSYCHOMOTOR"),
    ("i lost interest in that show after the second season", "ANHEDONIA"),
    ("that exam was killing me but i passed", "SUICIDAL_THOUGHTS"),
)

_EXPLAIN_POS = "the sentence describes {what}, which matches {symptom}."
_EXPLAIN_NEG = "the sentence mentions related words but does not describe {symptom}."
_EXPLAIN_SPECIAL = "the annotator flagged this sentence as a special case."

_WORD_RE = re.compile(r"[a-z]+")


def _words(*texts: str) -> set[str]:
    return {w for t in texts for w in _WORD_RE.findall(t.lower())}


def _all_template_text() -> list[str]:
    texts: list[str] = []
    for pool in (_STRONG, _WEAK):
        for cores in pool.values():
            texts.extend(cores)
    texts += list(_EVIDENCE_OPENERS) + list(_EVIDENCE_SUFFIXES) + list(_FILLER_OPENERS)
    texts += list(_FILLERS) + [s for s, _ in _DISTRACTORS]
    texts += list(CRITERION_DESCRIPTIONS.values())
    return texts


#: Every lowercase word (split on non-letters) that a generated post, or a criterion
#: description, can contain. A tiny encoder's vocabulary is built from it.
SYNTHETIC_WORDS: frozenset[str] = frozenset(_words(*_all_template_text()))


def _weighted_sample(rng: random.Random, weights: dict[str, float], k: int) -> list[str]:
    """Sample ``k`` distinct keys with probability proportional to their weight."""
    pool = dict(weights)
    chosen: list[str] = []
    for _ in range(min(k, len(pool))):
        keys = list(pool)
        pick = rng.choices(keys, weights=[pool[x] for x in keys], k=1)[0]
        chosen.append(pick)
        del pool[pick]
    return chosen


def _evidence_sentence(rng: random.Random, symptom: str) -> tuple[str, bool]:
    weak = rng.random() < WEAK_RATE
    core = rng.choice(_WEAK[symptom] if weak else _STRONG[symptom])
    opener = rng.choice(_EVIDENCE_OPENERS)
    suffix = rng.choice(_EVIDENCE_SUFFIXES)
    return f"{opener}{core}{suffix}.", weak


def _new_post_id(rng: random.Random, used: set[str]) -> str:
    while True:
        pid = f"s_{rng.randint(1, 2999)}_{rng.randint(0, 40)}"
        if pid not in used:
            used.add(pid)
            return pid


def _generate(num_posts: int, seed: int) -> tuple[list[list[str]], list[list[str]]]:
    """Return the rows (without headers) of the posts and annotations tables."""
    rng = random.Random(seed)
    used: set[str] = set()
    posts: list[list[str]] = []
    annotations: list[list[str]] = []
    for _ in range(num_posts):
        post_id = _new_post_id(rng, used)
        if rng.random() < NO_SYMPTOM_RATE:
            symptoms: list[str] = []
        else:
            k = rng.choices((1, 2, 3), weights=(0.55, 0.3, 0.15), k=1)[0]
            symptoms = _weighted_sample(rng, _SAMPLING_WEIGHTS, k)
        n_sentences = rng.randint(max(3, len(symptoms) + 1), 9)
        n_fill = n_sentences - len(symptoms)
        # (sentence, kind, symptom): kind in {"evidence", "filler", "distractor"}
        sentences: list[tuple[str, str, str]] = []
        for symptom in symptoms:
            text, _weak = _evidence_sentence(rng, symptom)
            sentences.append((text, "evidence", symptom))
        fillers = rng.sample(_FILLERS, n_fill)
        distractors = rng.sample(_DISTRACTORS, len(_DISTRACTORS))
        for core in fillers:
            if distractors and rng.random() < 0.15:
                d_text, d_symptom = distractors.pop()
                sentences.append((f"{rng.choice(_FILLER_OPENERS)}{d_text}.", "distractor", d_symptom))
            else:
                sentences.append((f"{rng.choice(_FILLER_OPENERS)}{core}.", "filler", ""))
        spare = [f for f in _FILLERS if f not in fillers]
        while len(sentences) < 9 and sum(len(s.split()) for s, _, _ in sentences) < MIN_WORDS:
            core = spare.pop(rng.randrange(len(spare)))
            sentences.append((f"{rng.choice(_FILLER_OPENERS)}{core}.", "filler", ""))
        rng.shuffle(sentences)
        posts.append([post_id, " ".join(s for s, _, _ in sentences)])

        rows: list[tuple[int, str, int, str]] = []  # (index, symptom, status, explanation)
        for idx, (_text, kind, symptom) in enumerate(sentences):
            if kind == "evidence":
                rows.append((idx, symptom, 1, _EXPLAIN_POS.format(
                    what=symptom.lower().replace("_", " "), symptom=symptom)))
                if rng.random() < 0.1:
                    other = rng.choice([s for s in SYMPTOMS if s not in symptoms])
                    rows.append((idx, other, 0, _EXPLAIN_NEG.format(symptom=other)))
            elif kind == "distractor" and rng.random() < 0.6:
                rows.append((idx, symptom, 0, _EXPLAIN_NEG.format(symptom=symptom)))
        if rng.random() < 0.04:
            rows.append((rng.randrange(len(sentences)), SPECIAL_CASE, 1, _EXPLAIN_SPECIAL))
        for idx, symptom, status, explanation in sorted(rows):
            annotations.append([post_id, f"{post_id}_{idx}", sentences[idx][0], symptom,
                                str(status), explanation])
    return posts, annotations


def _csv_text(header: tuple[str, ...], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _complete(path: Path) -> bool:
    return (path / POSTS_FILE).is_file() and (path / ANNOTATIONS_FILE).is_file()


def write_synthetic_redsm5(out_dir: Path, *, num_posts: int = 240, seed: int = 13) -> Path:
    """Write a synthetic RedSM5 (posts + annotations CSVs, real format) into ``out_dir``.

    Deterministic byte for byte for a given ``(num_posts, seed)``. The folder is
    written into a ``tmp-*`` sibling and renamed into place, so readers never see a
    half-written set. If ``out_dir`` already holds both CSV files it is returned
    untouched (whatever seed made it; see its ``dataset_info.json``).
    """
    out_dir = Path(out_dir)
    if _complete(out_dir):
        return out_dir
    if num_posts < 1:
        raise ValueError(f"num_posts must be >= 1, got {num_posts}")
    posts, annotations = _generate(num_posts, seed)
    info = {
        "name": "synthetic-redsm5",
        "synthetic": True,
        "generator": "tune_app.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "num_posts": num_posts,
        "num_annotations": len(annotations),
        "files": [POSTS_FILE, ANNOTATIONS_FILE],
    }
    readme = (
        "# Synthetic RedSM5\n\n"
        "Fully synthetic posts made from templated sentences by `tune_app.data.synthetic` "
        f"(generator version {GENERATOR_VERSION}, seed {seed}, {num_posts} posts). "
        "No real posts. Same file format as RedSM5; numbers obtained on it say nothing "
        "about the real data.\n"
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"tmp-{out_dir.name}-", dir=out_dir.parent))
    try:
        for name, content in (
            (POSTS_FILE, _csv_text(POSTS_COLUMNS, posts)),
            (ANNOTATIONS_FILE, _csv_text(ANNOTATIONS_COLUMNS, annotations)),
            ("dataset_info.json", json.dumps(info, indent=2, sort_keys=True) + "\n"),
            ("SYNTHETIC.md", readme),
        ):
            with open(tmp / name, "w", encoding="utf-8", newline="") as f:
                f.write(content)
        tmp.chmod(0o755)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if _complete(out_dir):  # another writer finished first
                return out_dir
            raise FileExistsError(
                f"{out_dir} exists but lacks {POSTS_FILE}/{ANNOTATIONS_FILE}: "
                "remove it and run again") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("wrote synthetic RedSM5 (%d posts, %d annotations, seed %d) to %s",
                num_posts, len(annotations), seed, out_dir)
    return out_dir
