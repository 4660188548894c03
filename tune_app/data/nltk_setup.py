"""Offline NLTK/TextAttack environment: where the data lives, how it is installed, checks.

TextAttack needs, with no network at run time:

* an English stopword list at ``<NLTK data>/corpora/stopwords/english``;
* WordNet at ``<NLTK data>/corpora/wordnet/`` (copied from Debian's ``wordnet-base``
  and ``wordnet-sense-index``, plus a ``lexnames`` file Debian does not ship) for the
  WordNet methods;
* the marker ``post_install_check_3`` in its cache dir, or its first import runs
  ``nltk.download`` six times and dies offline.

Locations (inside the virtual environment, where NLTK looks by default):
``$TUNE_APP_NLTK_DATA`` or ``<sys.prefix>/share/nltk_data``; ``$TA_CACHE_DIR`` or
``<sys.prefix>/share/textattack``. ``scripts/install_nltk_data.sh`` runs
``python -m tune_app.data.nltk_setup install``; ``... check`` reports what is missing.
Importing this module is cheap: it imports neither NLTK nor TextAttack.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

#: TextAttack skips its network post-install step when this file is in its cache dir.
TEXTATTACK_MARKER = "post_install_check_3"
#: Files NLTK's WordNet reader needs, as shipped by Debian in /usr/share/wordnet.
WORDNET_FILES: tuple[str, ...] = (
    "adj.exc", "adv.exc", "noun.exc", "verb.exc", "cntlist.rev",
    "data.adj", "data.adv", "data.noun", "data.verb",
    "index.adj", "index.adv", "index.noun", "index.verb", "index.sense",
)
DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")
DEBIAN_LEXNAMES_MAN = Path("/usr/share/man/man5/lexnames.5WN.gz")
STOPWORDS_ASSET = Path(__file__).resolve().parent / "assets" / "stopwords_english.txt"
INSTALL_HINT = "run scripts/install_nltk_data.sh (as root it apt-installs wordnet-base " \
               "and wordnet-sense-index; no download at run time)"

#: Environment variables TextAttack's import overwrites (restored by import_textattack).
_TEXTATTACK_ENV = ("HF_HOME", "XDG_CACHE_HOME", "TFHUB_CACHE_DIR", "PYTORCH_TRANSFORMERS_CACHE")
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
#: WordNet 3.0 lexicographer files in number order (lexnames(5WN)); the fallback
#: when the man page is not installed (e.g. images that exclude /usr/share/man).
WORDNET_LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal",
    "noun.artifact", "noun.attribute", "noun.body", "noun.cognition",
    "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon",
    "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body",
    "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
)


def nltk_data_dir() -> Path:
    """The NLTK data folder this project installs into and reads from."""
    env = os.environ.get("TUNE_APP_NLTK_DATA")
    return Path(env).expanduser() if env else Path(sys.prefix) / "share" / "nltk_data"


def textattack_cache_dir() -> Path:
    """TextAttack's cache folder: ``$TA_CACHE_DIR`` or one inside the environment."""
    env = os.environ.get("TA_CACHE_DIR")
    return Path(env).expanduser() if env else Path(sys.prefix) / "share" / "textattack"


def lexnames_table(names: tuple[str, ...] | list[str] = WORDNET_LEXNAMES) -> str:
    """NLTK's ``lexnames`` file: ``NN<TAB>name<TAB>category`` per line."""
    return "".join(f"{i:02d}\t{n}\t{_CATEGORY[n.split('.')[0]]}\n" for i, n in enumerate(names))


def lexnames_from_man(man_text: str) -> str:
    """Derive ``lexnames`` from the ``lexnames(5WN)`` man page source (45 entries)."""
    rows = re.findall(r"^(\d{2})\t((?:noun|verb|adj|adv)\.\w+)\s*\t", man_text, re.M)
    numbers = [int(n) for n, _ in rows]
    if not rows or numbers != list(range(len(rows))):
        raise ValueError(f"unexpected lexnames(5WN) table: numbers {numbers[:50]}")
    return lexnames_table([name for _, name in rows])


def missing_resources(*, wordnet: bool) -> list[str]:
    """What TextAttack (and, with ``wordnet``, the WordNet methods) lack here; [] if ready."""
    data, cache = nltk_data_dir(), textattack_cache_dir()
    missing: list[str] = []
    if not (data / "corpora" / "stopwords" / "english").is_file():
        missing.append(f"English stopword list {data / 'corpora/stopwords/english'}")
    if not (cache / TEXTATTACK_MARKER).is_file():
        missing.append(f"TextAttack post-install marker {cache / TEXTATTACK_MARKER}")
    if wordnet:
        wn = data / "corpora" / "wordnet"
        absent = [f for f in (*WORDNET_FILES, "lexnames") if not (wn / f).is_file()]
        if absent:
            missing.append(f"WordNet files in {wn}: {', '.join(absent)}")
    return missing


def configure_environment() -> None:
    """Point NLTK and TextAttack at this project's offline data (call before importing)."""
    data = str(nltk_data_dir())
    os.environ.setdefault("TA_CACHE_DIR", str(textattack_cache_dir()))
    paths = os.environ.get("NLTK_DATA", "")
    if data not in paths.split(os.pathsep):
        os.environ["NLTK_DATA"] = os.pathsep.join(p for p in (data, paths) if p)
    nltk_data = sys.modules.get("nltk.data")
    if nltk_data is not None and data not in nltk_data.path:
        nltk_data.path.insert(0, data)


def import_textattack(*, wordnet: bool) -> ModuleType:
    """Import TextAttack offline (~10 s, ~600 MB the first time).

    Raises ``RuntimeError`` naming the missing files if the data is not installed.
    TextAttack's import points ``HF_HOME``, ``XDG_CACHE_HOME``, ``TFHUB_CACHE_DIR`` and
    ``PYTORCH_TRANSFORMERS_CACHE`` at its cache dir; they are restored afterwards, and
    the Hugging Face libraries are imported first so their cache paths stay as they were.
    """
    if "textattack" in sys.modules:
        return sys.modules["textattack"]
    missing = missing_resources(wordnet=wordnet)
    if missing:
        raise RuntimeError(f"TextAttack cannot run offline: missing {'; '.join(missing)}; "
                           f"{INSTALL_HINT}.")
    configure_environment()
    # TextAttack imports these anyway; importing them first fixes their cache paths
    # before its import points HF_HOME & co. at its own cache dir.
    import datasets.config  # noqa: F401
    import huggingface_hub.constants  # noqa: F401
    import nltk.data
    import transformers.utils.hub  # noqa: F401

    if str(nltk_data_dir()) not in nltk.data.path:
        nltk.data.path.insert(0, str(nltk_data_dir()))
    saved = {k: os.environ.get(k) for k in _TEXTATTACK_ENV}
    try:
        import textattack
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return textattack


def _copy_if_changed(src: Path, dst: Path) -> bool:
    if dst.is_file() and not dst.is_symlink() and dst.stat().st_size == src.stat().st_size \
            and dst.stat().st_mtime >= src.stat().st_mtime:
        return False
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.copyfile(src, tmp)  # a copy: NLTK rejects symlinks that leave its data root
    os.replace(tmp, dst)
    return True


def _write_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    from tune_app.study import write_text_atomic

    write_text_atomic(path, text)
    return True


def install_data(*, data_dir: Path | None = None, cache_dir: Path | None = None,
                 wordnet_src: Path | None = DEBIAN_WORDNET_DIR,
                 lexnames_man: Path | None = DEBIAN_LEXNAMES_MAN) -> list[str]:
    """Install stopwords, the TextAttack marker and (when ``wordnet_src`` holds it) WordNet.

    Idempotent; returns a line per action taken or skipped. WordNet is skipped with a
    warning line when ``wordnet_src`` lacks files (the WordNet methods stay unavailable).
    """
    data = data_dir or nltk_data_dir()
    cache = cache_dir or textattack_cache_dir()
    log: list[str] = []
    stop = data / "corpora" / "stopwords"
    stop.mkdir(parents=True, exist_ok=True)
    words = STOPWORDS_ASSET.read_text(encoding="utf-8")
    log.append(f"{'wrote' if _write_if_changed(stop / 'english', words) else 'kept'} "
               f"{stop / 'english'}")
    cache.mkdir(parents=True, exist_ok=True)
    marker = cache / TEXTATTACK_MARKER
    if not marker.is_file():
        marker.touch()
        log.append(f"wrote {marker}")
    else:
        log.append(f"kept {marker}")

    if wordnet_src is None or any(not (wordnet_src / f).is_file() for f in WORDNET_FILES):
        log.append(f"warning: WordNet not found in {wordnet_src} (Debian packages wordnet-base "
                   "wordnet-sense-index); methods synonym/insert stay unavailable")
        return log
    wn = data / "corpora" / "wordnet"
    wn.mkdir(parents=True, exist_ok=True)
    copied = sum(_copy_if_changed(wordnet_src / f, wn / f) for f in WORDNET_FILES)
    log.append(f"WordNet: {copied} of {len(WORDNET_FILES)} files copied into {wn}")
    if lexnames_man is not None and lexnames_man.is_file():
        raw = lexnames_man.read_bytes()
        text = (gzip.decompress(raw) if lexnames_man.suffix == ".gz" else raw).decode("utf-8")
        lexnames, origin = lexnames_from_man(text), str(lexnames_man)
    else:
        lexnames, origin = lexnames_table(), "built-in WordNet 3.0 table"
    changed = _write_if_changed(wn / "lexnames", lexnames)
    log.append(f"{'wrote' if changed else 'kept'} {wn / 'lexnames'} (from {origin})")
    return log


def main(argv: list[str] | None = None) -> int:
    """CLI: ``install`` the offline data or ``check`` it (exit 1 when something is missing)."""
    parser = argparse.ArgumentParser(prog="python -m tune_app.data.nltk_setup",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("install", "check"))
    parser.add_argument("--wordnet-dir", type=Path, default=DEBIAN_WORDNET_DIR)
    parser.add_argument("--lexnames-man", type=Path, default=DEBIAN_LEXNAMES_MAN)
    args = parser.parse_args(argv)
    print(f"NLTK data: {nltk_data_dir()} | TextAttack cache: {textattack_cache_dir()}")
    if args.action == "install":
        for line in install_data(wordnet_src=args.wordnet_dir, lexnames_man=args.lexnames_man):
            print(line)
    missing = missing_resources(wordnet=True)
    for item in missing:
        print(f"missing: {item}")
    if not missing:
        print("ok: TextAttack and WordNet data present")
    return 1 if missing and args.action == "check" else 0


if __name__ == "__main__":
    sys.exit(main())
