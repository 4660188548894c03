"""Fault-injection pauses for crash tests: ``TUNE_APP_FAILPOINTS="save=0.5,prune=0.5"``.

A named point sleeps for the given seconds when the variable names it, so a test
can SIGKILL a real process while it is inside a save or a prune (the tiny test
model saves in milliseconds: too fast to hit by chance). Unset (always, outside
tests) a point costs one dictionary lookup.

Points: ``save`` (inside ``save_checkpoint``: the model file is written, the rest
is not, nothing is published), ``prune`` (inside ``prune_checkpoint``: the
``PRUNED`` marker is in place, the first file is deleted, the others are not),
``prepare`` (at start-up: ``study_config.yaml`` is written, the data, the splits and
Tune's files are not), ``trial_start`` (in the trainable: the trial's folder and config
exist, nothing is trained or reported yet), ``report`` (in the trainable: the epoch's
checkpoint is published and in ``trial_state.json``, not yet reported to Tune), ``stop``
(in the early-stopping scheduler: the stop is in ``trial_state.json``, not yet in
``meta/early_stopping.json`` nor in Tune's experiment state), ``trial_end`` (in the driver's
retention callback: a trial has ended and retention pruned its checkpoints; Tune's
experiment state does not record the end yet), ``study_report`` (in
``write_study_report``: plots and HTML page written, the JSON report not yet), ``cleanup`` (in ``python -m tune_app.cleanup``: the report is printed, nothing
deleted yet).

:func:`triggered` asks whether a point is set at all: ``oom=1`` makes the first
training step of every trial raise a CUDA out-of-memory error, so the OOM path is
tested on machines without a GPU.
"""

from __future__ import annotations

import os
import time

ENV_VAR = "TUNE_APP_FAILPOINTS"
MARKS_VAR = "TUNE_APP_FAILPOINT_MARKS"


def _seconds(spec: str, name: str) -> float:
    """The seconds ``spec`` sets for point ``name`` (0 when it is not named).

    Only the item of ``name`` is parsed: a malformed item fails the point it names, where
    it is used, not every other point (the driver's ``prepare`` must not fail on a trial's).
    """
    seconds = 0.0
    for item in filter(None, (part.strip() for part in spec.split(","))):
        point, _, value = item.partition("=")
        if point.strip() != name:
            continue
        try:
            seconds = float(value)
        except ValueError:
            raise ValueError(f"{ENV_VAR}: {item!r} is not name=seconds (e.g. save=0.5)") from None
    return seconds


def pause(name: str) -> None:
    """Sleep at failpoint ``name`` if ``TUNE_APP_FAILPOINTS`` names it; with
    ``TUNE_APP_FAILPOINT_MARKS=<dir>`` set, first create ``<dir>/<name>`` (a test knows the
    process is inside the pause)."""
    spec = os.environ.get(ENV_VAR)
    if spec:
        seconds = _seconds(spec, name)
        if seconds > 0:
            marks = os.environ.get(MARKS_VAR)
            if marks:
                os.makedirs(marks, exist_ok=True)
                with open(os.path.join(marks, name), "a", encoding="utf-8"):
                    pass
            time.sleep(seconds)


def triggered(name: str) -> bool:
    """True when ``TUNE_APP_FAILPOINTS`` sets point ``name`` to a value > 0."""
    spec = os.environ.get(ENV_VAR)
    return spec is not None and _seconds(spec, name) > 0
