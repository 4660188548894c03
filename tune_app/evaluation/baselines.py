"""Reference baselines scored on the same split as the tuned model, for every study report.

So a user sees at a glance what the tuned model beats and by how much (the RedSM5 authors
report TF-IDF+SVM beside their transformers for the same reason):

* criteria matching: ``tfidf_logreg`` (TF-IDF of word uni+bigrams, one class-balanced
  logistic regression per criterion, trained on the train split, threshold 0.5) and
  ``always_positive`` (every criterion predicted for every post: the trivial predictor
  whose macro-F1 a model must clearly beat);
* evidence binding: ``lexical_tfidf`` - for each criterion the TF-IDF baseline predicts,
  the post's sentence most similar (TF-IDF cosine) to that symptom's training evidence
  sentences; null where it predicts the criterion absent (a full pipeline, like the model,
  which also decides null itself).

Evidence is scored in characters (``char_f1``: F1 of the predicted char span against the
best gold span of the slot, over slots with gold evidence; ``exact_match``; ``null_accuracy``
on slots without), so it compares with the model's ``char_f1`` whatever its tokenizer.
Everything here is deterministic (lbfgs, no random state involved).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from tune_app.data.redsm5 import label_vector
from tune_app.data.schema import NO_SYMPTOMS, SYMPTOMS, Post, evidence_char_spans

__all__ = ["BASELINE_NAMES", "baseline_report", "criteria_baselines", "evidence_baseline", "sentence_spans"]

#: Baselines in every report: criteria matching, then evidence binding.
BASELINE_NAMES: dict[str, tuple[str, ...]] = {
    "criteria_matching": ("tfidf_logreg", "always_positive"),
    "evidence_binding": ("lexical_tfidf",),
}
_SENTENCE_RE = re.compile(r"[^.!?\n]+(?:[.!?]+|(?=\n)|$)")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Char spans ``(start, end)`` of the sentences of ``text`` (split after ``.``/``!``/``?``
    and at newlines; surrounding whitespace trimmed, empty pieces dropped)."""
    out = []
    for m in _SENTENCE_RE.finditer(text):
        start, end = m.start(), m.end()
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start:
            out.append((start, end))
    return out


def _criteria(include_no_symptoms: bool) -> list[str]:
    return list(SYMPTOMS) + ([NO_SYMPTOMS] if include_no_symptoms else [])


def _labels(posts: Sequence[Post], include_no_symptoms: bool) -> np.ndarray:
    width = len(_criteria(include_no_symptoms))
    return np.array([label_vector(p, include_no_symptoms=include_no_symptoms) for p in posts],
                    dtype=np.int64).reshape(len(posts), width)


def _vectorizer() -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), lowercase=True)


def _scores(gold: np.ndarray, pred: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    from sklearn.metrics import precision_recall_fscore_support

    out: dict[str, Any] = {}
    for avg in ("macro", "micro"):
        p, r, f, _ = precision_recall_fscore_support(gold, pred, average=avg, zero_division=0)
        out[f"{avg}_f1"], out[f"{avg}_precision"], out[f"{avg}_recall"] = float(f), float(p), float(r)
    _, _, f_c, _ = precision_recall_fscore_support(gold, pred, average=None, zero_division=0)
    out["per_criterion_f1"] = {n: float(v) for n, v in zip(names, f_c, strict=True)}
    return out


def tfidf_logreg_predictions(train: Sequence[Post], posts: Sequence[Post], *,
                             include_no_symptoms: bool = True) -> np.ndarray:
    """0/1 predictions ``[N, C]`` of the TF-IDF + logistic-regression baseline on ``posts``
    (a criterion without both classes in ``train`` is predicted as its only class)."""
    from sklearn.linear_model import LogisticRegression

    y = _labels(train, include_no_symptoms)
    vec = _vectorizer()
    x_train = vec.fit_transform([p.text for p in train])
    x = vec.transform([p.text for p in posts])
    pred = np.zeros((len(posts), y.shape[1]), dtype=np.int64)
    for j in range(y.shape[1]):
        if y[:, j].min() == y[:, j].max():
            pred[:, j] = int(y[0, j]) if len(y) else 0
            continue
        clf = LogisticRegression(class_weight="balanced", max_iter=2000)
        clf.fit(x_train, y[:, j])
        pred[:, j] = (clf.predict_proba(x)[:, 1] >= 0.5).astype(np.int64)
    return pred


def criteria_baselines(train: Sequence[Post], posts: Sequence[Post], *,
                       include_no_symptoms: bool = True) -> dict[str, dict[str, Any]]:
    """``{tfidf_logreg, always_positive}`` criteria-matching scores on ``posts``."""
    names = _criteria(include_no_symptoms)
    gold = _labels(posts, include_no_symptoms)
    tfidf = tfidf_logreg_predictions(train, posts, include_no_symptoms=include_no_symptoms)
    return {
        "tfidf_logreg": {"description": "TF-IDF (word 1-2 grams) + class-balanced logistic regression "
                                        "per criterion, trained on the train split, threshold 0.5",
                         **_scores(gold, tfidf, names)},
        "always_positive": {"description": "every criterion predicted for every post",
                            **_scores(gold, np.ones_like(gold), names)},
    }


def _char_f1(p: tuple[int, int], g: tuple[int, int]) -> float:
    overlap = min(p[1], g[1]) - max(p[0], g[0])
    if overlap <= 0:
        return 0.0
    precision, recall = overlap / (p[1] - p[0]), overlap / (g[1] - g[0])
    return 2 * precision * recall / (precision + recall)


def evidence_baseline(train: Sequence[Post], posts: Sequence[Post], *, include_no_symptoms: bool = True,
                      present: np.ndarray | None = None) -> dict[str, Any]:
    """The lexical evidence baseline (``lexical_tfidf``) on ``posts``.

    For each post and symptom it predicts present (``present [N, C]``, default: the TF-IDF +
    logistic-regression baseline's predictions), the sentence with the highest TF-IDF cosine
    to the symptom's training evidence sentences (their mean vector); null elsewhere.
    """
    from sklearn.preprocessing import normalize

    if present is None:
        present = tfidf_logreg_predictions(train, posts, include_no_symptoms=include_no_symptoms)
    vec = _vectorizer()
    vec.fit([p.text[s:e] for p in train for s, e in sentence_spans(p.text)] or ["empty"])
    centroids: dict[str, Any] = {}
    for symptom in SYMPTOMS:
        texts = [p.text[s:e] for p in train for s, e in evidence_char_spans(p, symptom)]
        if texts:
            centroids[symptom] = normalize(np.asarray(vec.transform(texts).mean(axis=0)))
    f1s: list[float] = []
    exact: list[float] = []
    null_ok: list[float] = []
    for i, post in enumerate(posts):
        sents = sentence_spans(post.text)
        sims = vec.transform([post.text[s:e] for s, e in sents]) if sents else None
        for j, symptom in enumerate(SYMPTOMS):
            pred: tuple[int, int] | None = None
            if present[i, j] and sims is not None and symptom in centroids:
                best = int(np.argmax(np.asarray(sims @ centroids[symptom].T).reshape(-1)))
                pred = sents[best]
            gold = evidence_char_spans(post, symptom)
            if gold:
                f1s.append(max(_char_f1(pred, g) for g in gold) if pred else 0.0)
                exact.append(float(pred in gold))
            else:
                null_ok.append(float(pred is None))
        if include_no_symptoms:
            null_ok.append(1.0)  # the NO_SYMPTOMS slot has no evidence; the baseline predicts none
    return {
        "description": "the post's sentence most similar (TF-IDF cosine) to the symptom's training "
                       "evidence, for each symptom the TF-IDF + logistic-regression baseline predicts; "
                       "null otherwise",
        "char_f1": float(np.mean(f1s)) if f1s else 0.0,
        "exact_match": float(np.mean(exact)) if exact else 0.0,
        "null_accuracy": float(np.mean(null_ok)) if null_ok else 0.0,
        "num_gold_spans": len(f1s),
    }


def baseline_report(train: Sequence[Post], posts: Sequence[Post], *, include_no_symptoms: bool = True,
                    split: str = "test", model_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report's ``baselines`` section: every baseline on ``posts`` (the ``split``), trained
    on ``train``, and, given the model's split metrics, the model's margin over each
    (``model_minus_baseline``: macro-F1 for criteria, char F1 for evidence)."""
    crit = criteria_baselines(train, posts, include_no_symptoms=include_no_symptoms)
    present = tfidf_logreg_predictions(train, posts, include_no_symptoms=include_no_symptoms)
    evid = {"lexical_tfidf": evidence_baseline(train, posts, include_no_symptoms=include_no_symptoms,
                                               present=present)}
    out: dict[str, Any] = {"split": split, "train_posts": len(train), "posts": len(posts),
                           "criteria_matching": crit, "evidence_binding": evid}
    if model_metrics is not None:
        model_macro = (model_metrics.get("criteria_matching") or {}).get("macro_f1")
        model_char = (model_metrics.get("evidence_binding") or {}).get("char_f1")
        out["model_minus_baseline"] = {
            "criteria_matching": {name: (float(model_macro) - b["macro_f1"]
                                         if isinstance(model_macro, int | float) else None)
                                  for name, b in crit.items()},
            "evidence_binding": {name: (float(model_char) - b["char_f1"]
                                        if isinstance(model_char, int | float) else None)
                                 for name, b in evid.items()},
        }
    return out
