"""Redact secrets from every string that leaves the process (logs, files, errors, MLflow).

``sanitize(text)`` replaces, with ``***`` markers:

* token formats of any realistic length: Hugging Face ``hf_...``, OpenAI ``sk-...`` /
  ``sk-proj-...``, GitHub ``ghp_``/``gho_``/``ghu_``/``ghs_``/``ghr_``/``github_pat_``,
  AWS access key ids, Slack, Google API keys, JWTs. A short body (under 20 characters)
  counts only when it looks random (a digit, or upper and lower case): ``hf_SECRETabc123``
  is redacted, ``hf_datasets`` is not;
* bearer/basic credentials, ``scheme://user:password@host``;
* values of ``key=value`` / ``key: value`` / ``"key": "value"`` pairs whose key names a
  secret (``password``, ``token``, ``api_key``, ... also inside ``MY_HF_TOKEN``, ``db_password``);
* the literal values of environment variables whose names look secret (``HF_TOKEN``,
  ``OPENAI_API_KEY``, ``*_SECRET*``, ``*_PASSWORD*``, ``*_TOKEN*``, ``*_KEY``, ...), read
  from ``os.environ`` at each call (compiled once per distinct set of such variables);
* e-mail addresses.

It over-redacts rather than under-redacts, but leaves ordinary text alone
(``tokenizer``, ``max_span_tokens``, metric names, trial ids, paths).

Channels: ``SanitizingFilter`` (log records), ``SanitizingStream`` (``sys.stdout`` /
``sys.stderr``, installed by ``install_std_streams``), ``sanitize_value`` (files and MLflow),
``sanitized_exception`` (errors leaving a trial), ``install_excepthook``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from functools import lru_cache
from types import TracebackType
from typing import Any, TextIO

REDACTED = "***"

# --- key names that hold secrets -------------------------------------------------------------
#: Secret words that may be glued to other letters (``MY_HF_TOKEN``, ``dbpassword``) ...
_LONG_KEYS = (r"password|passwd|passphrase|secret|token|api[_-]?key|apikey|access[_-]?key|"
              r"private[_-]?key|credentials?|authorization")
#: ... and short ones that must start a word (``db_pass``, not ``bypass``).
_SHORT_KEYS = r"(?<![A-Za-z])(?:pass|pwd|auth)"
_KEY = rf"(?:{_LONG_KEYS}|{_SHORT_KEYS})"
#: A mapping key whose value is secret as a whole (``{"api_key": ...}``, ``db_password``).
_SECRET_KEY_NAME = re.compile(rf"(?i){_KEY}(?:[_-]?(?:id|value|string))?$")


def _looks_random(body: str) -> bool:
    """A token body: long, or with a digit, or with both upper- and lower-case letters."""
    return (len(body) >= 20 or any(c.isdigit() for c in body)
            or (any(c.isupper() for c in body) and any(c.islower() for c in body)))


def _token(prefix_group: int = 1, body_group: int = 2) -> Callable[[re.Match[str]], str]:
    def replace(m: re.Match[str]) -> str:
        return m.group(prefix_group) + REDACTED if _looks_random(m.group(body_group)) else m.group(0)
    return replace


_Replacement = str | Callable[[re.Match[str]], str]

#: The words of ``_KEY`` (lower case): a text without any of them skips the key rules.
_KEY_WORDS = ("pass", "pwd", "auth", "secret", "token", "key", "credential")

#: (pattern, replacement, lower-case substrings one of which a match needs), applied in order
#: (after the environment's secret values). The substrings are a cheap pre-check only.
_RULES: list[tuple[re.Pattern[str], _Replacement, tuple[str, ...]]] = [
    # user:password@host in any URL-like string.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s:/@]*):([^\s@]+)@"), rf"\1\2:{REDACTED}@", ("://",)),
    # Authorization headers: bearer tokens always, basic credentials when they look random.
    (re.compile(r"\b((?i:bearer)\s+)[A-Za-z0-9._~+/=-]{6,}"), rf"\1{REDACTED}", ("bearer",)),
    (re.compile(r"\b(Basic\s+)([A-Za-z0-9+/=]{6,})"), _token(), ("basic",)),
    # "key": "quoted value" / key='quoted value' (spaces inside the quotes too; no closing quote:
    # to the end of the line).
    (re.compile(rf"(?i)({_KEY}[\"']?\s*[=:]\s*)([\"'])(?:(?!\2).)*\2?"), rf"\1\2{REDACTED}\2", _KEY_WORDS),
    # key=value, key: value (unquoted: up to a space, quote or separator; not one redacted already,
    # e.g. the user of https://pass:***@host).
    (re.compile(rf"(?i)({_KEY}[\"']?\s*[=:]\s*)(?![\"']|\*\*\*)[^\s\"',;&}})\]]+"), rf"\1{REDACTED}",
     _KEY_WORDS),
    # Token formats (no word boundary before hf_/gh*_: glued text must not hide them).
    (re.compile(r"(hf_)([A-Za-z0-9]{6,})"), _token(), ("hf_",)),
    (re.compile(r"(?<![A-Za-z])(sk-(?:proj-|svcacct-|admin-|ant-)?)([A-Za-z0-9_-]{6,})"), _token(), ("sk-",)),
    (re.compile(r"((?:ghp|gho|ghu|ghs|ghr)_)([A-Za-z0-9]{6,})"), _token(), ("gh",)),
    (re.compile(r"(github_pat_)([A-Za-z0-9_]{6,})"), _token(), ("github_pat_",)),
    (re.compile(r"(?:AKIA|ASIA)[0-9A-Z]{16}"), REDACTED, ("akia", "asia")),
    (re.compile(r"xox[abprs]-[A-Za-z0-9-]{10,}"), REDACTED, ("xox",)),
    (re.compile(r"AIza[0-9A-Za-z_-]{30,}"), REDACTED, ("aiza",)),
    (re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), REDACTED, ("eyj",)),  # JWT
    # E-mail addresses.
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), "<email>", ("@",)),
]

# --- secret environment variables -----------------------------------------------------------
#: Names whose values are secrets: ``HF_TOKEN``, ``OPENAI_API_KEY``, ``*_SECRET*``,
#: ``*_PASSWORD*``, ``*_TOKEN*``, ``*_KEY``/``*_KEY_ID`` (not ``*_PATH``/``*_FILE``/``*_DIR``).
_SECRET_ENV_NAME = re.compile(
    r"(?i)^(?!.*_(?:PATH|FILE|DIR|HOME)$)(?:"
    r".*(?:^|_)(?:SECRETS?|PASSWORDS?|PASSWD|PASSPHRASE|TOKENS?|CREDENTIALS?|ACCESS_KEY)(?:_|$)"
    r"|.*(?:^|_)KEY(?:_ID)?$)")
#: Values never treated as secrets (switches and numbers say nothing).
_BORING_VALUE = re.compile(r"(?i)^(?:true|false|yes|no|on|off|none|null|enabled?|disabled?|[0-9.]+)$")
#: Shortest environment value that is redacted.
MIN_ENV_SECRET = 6


@lru_cache(maxsize=4096)
def secret_env_name(name: str) -> bool:
    """True when environment variable ``name`` names a secret (``HF_TOKEN``, ``DB_PASSWORD``, ...)."""
    return bool(_SECRET_ENV_NAME.match(name))


def _secret_env_items() -> tuple[tuple[str, str], ...]:
    """The (name, value) pairs of secret-named environment variables worth redacting."""
    raw = getattr(os.environ, "_data", None)  # POSIX: bytes -> bytes; skips decoding every entry
    if isinstance(raw, dict):
        names = [os.fsdecode(k) for k in raw if _secret_env_name_bytes(k)]
    else:
        names = [k for k in os.environ if secret_env_name(k)]
    items = ((k, os.environ.get(k, "")) for k in names)
    return tuple(sorted((k, v) for k, v in items if len(v) >= MIN_ENV_SECRET and not _BORING_VALUE.match(v)))


@lru_cache(maxsize=4096)
def _secret_env_name_bytes(name: bytes) -> bool:
    return secret_env_name(os.fsdecode(name))


@lru_cache(maxsize=8)
def _env_pattern(items: tuple[tuple[str, str], ...]) -> re.Pattern[str] | None:
    values = sorted({v for _, v in items}, key=len, reverse=True)
    return re.compile("|".join(re.escape(v) for v in values)) if values else None


def sanitize(text: str) -> str:
    """``text`` with every recognised secret replaced."""
    if not text:
        return text
    env = _env_pattern(_secret_env_items())
    if env is not None:
        text = env.sub(REDACTED, text)
    low = text.lower()
    for pattern, replacement, needs in _RULES:
        if any(n in low for n in needs):
            text = pattern.sub(replacement, text)
            low = text.lower()
    return text


def secret_key(key: str) -> bool:
    """True when a mapping key names a secret (its whole value is redacted)."""
    return bool(_SECRET_KEY_NAME.search(key))


def sanitize_value(value: Any) -> Any:
    """Sanitise strings (recursively in dicts, lists and tuples); other values unchanged.

    A scalar under a key that names a secret (``{"api_key": ...}``) is replaced whole.
    """
    if isinstance(value, str):
        return sanitize(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            key = sanitize(k) if isinstance(k, str) else k
            if isinstance(k, str) and secret_key(k) and isinstance(v, str | int | float) \
                    and not isinstance(v, bool) and v != "":
                out[key] = REDACTED
            else:
                out[key] = sanitize_value(v)
        return out
    if isinstance(value, list | tuple):
        return type(value)(sanitize_value(v) for v in value)
    return value


def sanitize_mapping(values: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params/tags: keys and ``str(value)`` sanitised."""
    clean = sanitize_value({str(k): str(v) for k, v in values.items()})
    return {str(k): str(v) for k, v in clean.items()}


# --- exceptions ------------------------------------------------------------------------------
def sanitize_exception(exc: BaseException, *, with_traceback: bool = False) -> str:
    """``Type: message`` (or the full traceback) of ``exc`` with secrets removed."""
    if with_traceback:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    else:
        text = f"{type(exc).__name__}: {exc}"
    return sanitize(text)


class SanitizedError(RuntimeError):
    """Stands in for an exception that held a secret and cannot be rebuilt with a clean message;
    the message starts with the original class name (``ValueError: ...``)."""


def sanitized_exception(exc: BaseException) -> BaseException | None:
    """A picklable copy of ``exc`` without secrets, or None when ``exc`` holds none.

    "Holds" covers the message and the whole printed traceback (chained exceptions,
    notes). The copy has the same class when it can be rebuilt from its sanitised message
    (so handlers matching the class still do), else it is a ``SanitizedError`` whose message
    names the class. Its ``__notes__`` carry the sanitised original traceback; raise it
    ``from None`` so the original chain is not printed.
    """
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    clean_text = sanitize(text)
    if clean_text == text:
        return None
    message = sanitize(str(exc))
    clean: BaseException
    try:
        clean = type(exc)(message)
        if str(clean) != message:
            raise TypeError("message not kept")
        pickle.loads(pickle.dumps(clean))
    except Exception:  # noqa: BLE001 - any class that cannot be rebuilt: the generic stand-in
        clean = SanitizedError(f"{type(exc).__name__}: {message}")
    clean.add_note("Original traceback (sanitised):\n" + clean_text.rstrip())
    return clean


def _excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    text = "".join(traceback.format_exception(kind, exc, tb))
    sys.stderr.write(sanitize(text))


def install_excepthook() -> None:
    """Uncaught exceptions print a sanitised traceback."""
    sys.excepthook = _excepthook


# --- sys.stdout / sys.stderr -----------------------------------------------------------------
class SanitizingStream:
    """A text stream wrapper that sanitises what is written, line by line.

    Complete lines (``\\n`` or ``\\r``) are sanitised and passed on at once; a partial line
    waits for its end (a secret split over two writes is still found) until ``flush()``
    or 8 KiB. Everything else (``encoding``, ``fileno``, ``isatty``, ...) is the wrapped stream's.
    """

    _MAX_PENDING = 8192

    def __init__(self, stream: TextIO) -> None:
        self.wrapped = stream
        self._pending = ""
        self._lock = threading.RLock()

    def write(self, text: str) -> int:
        with self._lock:
            data = self._pending + text
            cut = max(data.rfind("\n"), data.rfind("\r")) + 1
            if len(data) - cut > self._MAX_PENDING:
                cut = len(data)
            if cut:
                self.wrapped.write(sanitize(data[:cut]))
            self._pending = data[cut:]
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                self.wrapped.write(sanitize(self._pending))
                self._pending = ""
            self.wrapped.flush()

    def close_flush(self) -> None:
        """At exit: pass on a last partial line; the wrapped stream may be closed already."""
        with contextlib.suppress(OSError, ValueError):
            self.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


def install_std_streams() -> None:
    """Wrap ``sys.stdout``/``sys.stderr`` in ``SanitizingStream`` (idempotent).

    Logging handlers already writing to the raw streams are pointed at the wrappers, and
    Ray's driver prints its workers' output through ``sys.stdout``/``sys.stderr``.
    """
    import atexit

    for name in ("stdout", "stderr"):
        current = getattr(sys, name)
        if current is None or isinstance(current, SanitizingStream):
            continue
        wrapper = SanitizingStream(current)
        setattr(sys, name, wrapper)
        atexit.register(wrapper.close_flush)
        _retarget_handlers(current, wrapper)


def _retarget_handlers(raw: Any, wrapper: SanitizingStream) -> None:
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                        if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for handler in lg.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is raw:
                handler.setStream(wrapper)


# --- logging ---------------------------------------------------------------------------------
#: ``LogRecord`` attributes that are not user ``extra`` fields.
STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class SanitizingFilter(logging.Filter):
    """Rewrites a record's message, exception text and ``extra`` strings without secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_tune_app_sanitized", False):
            return True
        record.msg = sanitize(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
        if record.exc_text:
            record.exc_text = sanitize(record.exc_text)
        if record.stack_info:
            record.stack_info = sanitize(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in STANDARD_ATTRS and not key.startswith("_"):
                setattr(record, key, sanitize_value(value))
        record._tune_app_sanitized = True
        return True
