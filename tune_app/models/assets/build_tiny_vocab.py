"""Build ``tiny_vocab.txt``, the WordPiece vocabulary of the offline ``tiny`` encoder.

Run from the repository root after ``tune_app.data.synthetic.SYNTHETIC_WORDS`` changes::

    python -m tune_app.models.assets.build_tiny_vocab          # rewrite the file
    python -m tune_app.models.assets.build_tiny_vocab --check  # exit 1 if out of date

The output is deterministic: special tokens, the synthetic words (sorted),
common English words, single characters (a-z, 0-9, ASCII punctuation) and ``##`` plus
each single character, so that every ASCII word tokenizes without ``[UNK]``.
"""

from __future__ import annotations

import argparse
import string
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

#: Where the committed vocabulary lives (package data).
VOCAB_PATH: Path = Path(__file__).resolve().parent / "tiny_vocab.txt"

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

_COMMON_WORDS_TEXT = """
    the be to of and a in that have i it for not on with he as you do at this but his by
    from they we say her she or an will my one all would there their what so up out if
    about who get which go me when make can like time no just him know take people into
    year your good some could them see other than then now look only come its over think
    also back after use two how our work first well way even new want because any these
    give day most us is are was were been being has had did does doing done said am
    very really much more many lot little bit always never sometimes often still again
    every everything nothing something anything someone anyone everyone nobody myself
    yourself himself herself ourselves themselves life live living feel feeling feelings
    felt feels thing things mind head heart body hard easy bad better best worse worst
    right wrong old young long short high low last next same different own another each
    few less least enough too why where here while before during since until through
    without against between under again once off down away around why yes okay ok oh
    cannot can't don't won't didn't isn't wasn't i'm i've it's that's im ive dont cant
    home house family friend friends mom dad mother father parents brother sister school
    job money help need needs tried try trying help please sorry thanks thank love hate
    happy sad tired sleep sleeping slept awake night morning today tonight week month
    years days hours eat eating ate food hungry weight appetite energy think thinking
    thought thoughts focus concentrate remember forget decision decisions die dying death
    dead kill suicide suicidal hurt pain worthless guilty guilt fail failure hopeless
    empty alone lonely cry crying anxiety anxious depressed depression therapy therapist
    doctor medication meds talk talking tell told ask asked went going gone came coming
    made making keep kept left leave stay stop started start end ended feel getting got
    let put seem seems seemed become became find found mean means meant care enjoy fun
    interest interested motivation move moving slow slowly restless bed wake woke hard
    post reddit anymore maybe probably actually literally honestly basically though
    although however else ever yet already almost both either neither such whole part
    place world point fact case week group problem problems question hand eye eyes face
"""
#: A few hundred frequent English words (and some domain words) as whole-word pieces.
COMMON_WORDS: tuple[str, ...] = tuple(_COMMON_WORDS_TEXT.split())

ALNUM: tuple[str, ...] = tuple(string.ascii_lowercase + string.digits)
PUNCTUATION: tuple[str, ...] = tuple(string.punctuation)


def _dedupe(tokens: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for tok in tokens:
        if tok and tok not in seen:
            seen.add(tok)
            out.append(tok)
    return out


def _word_pieces(word: str) -> list[str]:
    """Lower-cased pieces a BERT basic tokenizer would make of ``word`` (split on punctuation)."""
    pieces: list[str] = []
    cur = ""
    for ch in word.lower().strip():
        if ch in string.punctuation or ch.isspace():
            if cur:
                pieces.append(cur)
            cur = ""
            if ch in string.punctuation:
                pieces.append(ch)
        else:
            cur += ch
    if cur:
        pieces.append(cur)
    return pieces


def load_synthetic_words() -> tuple[str, ...]:
    """``tune_app.data.synthetic.SYNTHETIC_WORDS``: every word the embedded data set uses."""
    from tune_app.data.synthetic import SYNTHETIC_WORDS

    return tuple(SYNTHETIC_WORDS)


def build_vocab(synthetic_words: Sequence[str]) -> list[str]:
    """The full, deterministic, duplicate-free vocabulary list (index = token id)."""
    words: list[str] = []
    # Sorted: SYNTHETIC_WORDS may be a set, whose order changes between processes.
    for w in sorted(set(synthetic_words)) + list(COMMON_WORDS):
        words.extend(_word_pieces(w))
    return _dedupe(
        [*SPECIAL_TOKENS, *words, *ALNUM, *PUNCTUATION, *(f"##{c}" for c in ALNUM + PUNCTUATION)]
    )


def render(vocab: Sequence[str]) -> str:
    """File contents: one token per line."""
    return "".join(f"{tok}\n" for tok in vocab)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    parser.add_argument("--output", type=Path, default=VOCAB_PATH)
    args = parser.parse_args(argv)
    text = render(build_vocab(load_synthetic_words()))
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run python -m tune_app.models.assets.build_tiny_vocab",
                  file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output} ({len(text.splitlines())} tokens)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
