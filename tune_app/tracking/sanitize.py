"""Redact secrets from every string that leaves the process (logs, errors, MLflow).

``sanitize(text)`` replaces Hugging Face tokens, common API keys, bearer tokens,
passwords in URLs or ``key=value`` pairs, and e-mail addresses with ``***`` markers.
It over-redacts rather than under-redacts: a false positive costs readability, a false
negative leaks a credential.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import Mapping
from types import TracebackType
from typing import Any

REDACTED = "***"

_SECRET_KEYS = (
    r"pass(?:word|wd|phrase)?|pwd|secret|client[_-]?secret|token|access[_-]?token|"
    r"refresh[_-]?token|auth(?:orization)?|api[_-]?key|apikey|access[_-]?key|private[_-]?key|"
    r"hf[_-]?token|credentials?"
)

#: (pattern, replacement), applied in order.
_RULES: list[tuple[re.Pattern[str], str]] = [
    # user:password@host in any URL-like string.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s:/@]*):([^\s@]+)@"), rf"\1\2:{REDACTED}@"),
    # Authorization headers / bearer and basic credentials.
    (re.compile(r"\b((?i:bearer)|Basic)(\s+)[A-Za-z0-9._~+/=-]{8,}"), rf"\1\2{REDACTED}"),
    # key=value, key: value, "key": "value" (quotes optional).
    (re.compile(rf"(?i)((?:{_SECRET_KEYS})[\"']?\s*[=:]\s*[\"']?)[^\s\"',;&}}]+"), rf"\1{REDACTED}"),
    # Well-known token formats (no word boundary: glued text must not hide them).
    (re.compile(r"hf_[A-Za-z0-9]{16,}"), "hf_" + REDACTED),
    (re.compile(r"sk-[A-Za-z0-9_-]{16,}"), "sk-" + REDACTED),
    (re.compile(r"(?:AKIA|ASIA)[0-9A-Z]{16}"), REDACTED),
    (re.compile(r"(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"), REDACTED),
    (re.compile(r"xox[abprs]-[A-Za-z0-9-]{10,}"), REDACTED),
    (re.compile(r"AIza[0-9A-Za-z_-]{30,}"), REDACTED),
    (re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), REDACTED),  # JWT
    # E-mail addresses.
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), "<email>"),
]


def sanitize(text: str) -> str:
    """``text`` with every recognised secret replaced."""
    if not text:
        return text
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


def sanitize_value(value: Any) -> Any:
    """Sanitise strings (recursively in dicts, lists and tuples); other values unchanged."""
    if isinstance(value, str):
        return sanitize(value)
    if isinstance(value, Mapping):
        return {k: sanitize_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(sanitize_value(v) for v in value)
    return value


def sanitize_mapping(values: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params/tags: keys and ``str(value)`` sanitised."""
    return {sanitize(str(k)): sanitize(str(v)) for k, v in values.items()}


def sanitize_exception(exc: BaseException, *, with_traceback: bool = False) -> str:
    """``Type: message`` (or the full traceback) of ``exc`` with secrets removed."""
    if with_traceback:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    else:
        text = f"{type(exc).__name__}: {exc}"
    return sanitize(text)


def _excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    text = "".join(traceback.format_exception(kind, exc, tb))
    sys.stderr.write(sanitize(text))


def install_excepthook() -> None:
    """Uncaught exceptions print a sanitised traceback."""
    sys.excepthook = _excepthook


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
