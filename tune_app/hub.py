"""Hugging Face Hub access shared by the data loader and the encoder catalog.

Cache-first, retry with exponential backoff on transient errors, and errors that
say what to do (offline, gated/unauthorised, missing revision).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Waits between tries on a transient hub error: 1, 2, 4, 8, 16 s (5 tries in all).
BACKOFF_SECONDS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)


class HubAccessError(RuntimeError):
    """A hub resource could not be loaded; the message says what to do."""


def hub_offline() -> bool:
    """True when the process was told not to reach the Hub (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    return any(
        os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _is_auth_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(k in text for k in ("401", "403", "gated", "unauthorized", "authentication", "access to model", "restricted"))


def _is_missing_error(exc: BaseException) -> bool:
    name = type(exc).__name__
    text = str(exc).lower()
    return name in {"RepositoryNotFoundError", "RevisionNotFoundError", "EntryNotFoundError", "FileNotFoundError", "DatasetNotFoundError"} or (
        "404" in text or "not found" in text and "revision" in text
    )


def _is_transient(exc: BaseException) -> bool:
    if _is_auth_error(exc) or _is_missing_error(exc):
        return False
    text = f"{type(exc).__name__} {exc}".lower()
    return isinstance(exc, ConnectionError | TimeoutError | OSError) or any(
        k in text for k in ("timeout", "timed out", "connection", "temporarily", "502", "503", "504", "429")
    )


def call_with_retry(
    load: Callable[[], T],
    *,
    what: str,
    hub_id: str,
    revision: str | None,
    local_hint: str,
    backoff: tuple[float, ...] = BACKOFF_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``load`` (which should itself try the local cache first) with retries.

    Transient errors (connection, timeout, 5xx, 429) are retried after each wait in
    ``backoff`` (1, 2, 4, 8, 16 s by default; at most ``len(backoff)`` tries). Offline
    mode, authorisation and not-found errors are not retried. Every failure ends in a
    ``HubAccessError`` naming the id, the revision and what to do (``local_hint``).
    """
    rev = revision or "main (unpinned)"
    last: BaseException | None = None
    tries = 1 if hub_offline() else len(backoff)
    for attempt in range(tries):
        try:
            return load()
        except Exception as exc:  # noqa: BLE001 - we classify and re-raise below
            last = exc
            if not _is_transient(exc) or attempt == tries - 1:
                break
            wait = backoff[attempt]
            logger.warning("%s %s@%s: transient hub error (%s); retry %d/%d in %.0f s",
                           what, hub_id, rev, type(exc).__name__, attempt + 1, tries - 1, wait)
            sleep(wait)
    assert last is not None
    if _is_auth_error(last):
        advice = (f"'{hub_id}' is gated or needs a token: accept its terms on the Hub and "
                  f"run `huggingface-cli login` (or set HF_TOKEN), or {local_hint}.")
    elif _is_missing_error(last):
        advice = f"check the id and revision '{rev}' exist on the Hub, or {local_hint}."
    elif hub_offline():
        advice = (f"the Hub is switched off (HF_HUB_OFFLINE=1) and '{hub_id}' is not in the local "
                  f"cache: {local_hint}, or download it on a connected machine into the cache.")
    else:
        advice = f"the Hub could not be reached after {tries} tries: {local_hint}."
    raise HubAccessError(
        f"Could not load {what} '{hub_id}' (revision {rev}): {type(last).__name__}: "
        f"{str(last).splitlines()[0] if str(last) else ''}. To fix: {advice}"
    ) from last
