"""The journal of trials added since Tune last saved the study's state: ``<study>/trial_journal.jsonl``.

Before a new trial's actor starts, something durable must name it, so that a kill cannot leave a
trial folder (checkpoints, an MLflow run) that ``resume=`` does not know: the trial would be
sampled again beside an orphan. Rewriting Tune's whole experiment state for that costs time that
grows with the study (11 MB at 1000 trials). Instead the controller appends one line here and
fsyncs it (constant cost, ~20 KB), and Tune's full state is saved on its adaptive period
(``state_sync``). Each line holds what ``TuneController`` and the searcher did for that trial:

* ``tune_entry``: the trial's entry in Tune's state (``Trial.get_json_state()``, as it was when
  added: PENDING, its folder name chosen);
* ``searcher``: what the searcher chain needs to adopt it (``SearchGenerator``'s trial counter,
  the Optuna trial and the sampler's state after sampling it: see ``search``).

``resume=`` merges the journaled trials that Tune's saved state lacks into the trials Tune
restores, and the searcher adopts them (``state_sync.journaled_trials_rejoin_on_restore``): they
continue in their own folders, from their own checkpoints, exactly as if Tune's state had named
them. Once a full state save is durable, the journal is removed (:func:`clear`): it never holds
more than the trials of one save period.

A kill while a line is written leaves a torn last line; its trial never started (the append
returns before the actor is scheduled), so it is ignored. The file is only appended to after
this process's own full save removed it, so a torn line is never followed by another.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: The journal, in the study folder.
JOURNAL_FILE = "trial_journal.jsonl"
#: Format version of a journal line.
VERSION = 1


@dataclass(frozen=True)
class JournaledTrial:
    """One trial as the journal holds it."""

    trial_id: str
    tune_entry: tuple[str, str]
    searcher: dict[str, Any]


def journal_path(study: Path) -> Path:
    """``<study>/trial_journal.jsonl``."""
    return study / JOURNAL_FILE


def encode_blob(obj: Any) -> str:
    """``obj`` pickled, as base64 text (a searcher object in a JSON line)."""
    return base64.b64encode(pickle.dumps(obj)).decode("ascii")


def decode_blob(text: str) -> Any:
    """The object :func:`encode_blob` encoded."""
    return pickle.loads(base64.b64decode(text))  # noqa: S301 - written by this study's own driver


def append(study: Path, trial: JournaledTrial) -> None:
    """Append ``trial`` to the study's journal and make it durable (file fsynced; the folder too when new).

    Raises ``OSError`` (a full disk...): the caller then saves Tune's whole state instead.
    """
    path = journal_path(study)
    line = json.dumps({"v": VERSION, "trial_id": trial.trial_id, "tune_entry": list(trial.tune_entry),
                       "searcher": trial.searcher}) + "\n"
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        dir_fd = os.open(study, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read(study: Path) -> list[JournaledTrial]:
    """The journaled trials, in the order they were added; a torn or foreign line is skipped (logged)."""
    path = journal_path(study)
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    out: list[JournaledTrial] = []
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            state, meta = data["tune_entry"]
            out.append(JournaledTrial(trial_id=str(data["trial_id"]), tune_entry=(str(state), str(meta)),
                                      searcher=dict(data["searcher"])))
        except (ValueError, KeyError, TypeError) as exc:
            torn = number == len(lines)  # no newline after it: the write was cut short
            (logger.info if torn else logger.warning)(
                "%s line %d skipped (%s): %s", path, number, "a write cut short by a kill, its trial never started"
                if torn else "not a journal line", exc)
    return out


def clear(study: Path) -> None:
    """Remove the journal: Tune's state just saved durably names every trial it held."""
    journal_path(study).unlink(missing_ok=True)
