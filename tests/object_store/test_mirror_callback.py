"""``MirrorCallback``: which trial folders an event's sync walks (its cost follows the running
trials, not the study's size) and when it walks everything."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tune_app.callbacks import MirrorCallback


class SpyMirror:
    """Records each sync's arguments; fails while ``failing`` is set."""

    def __init__(self) -> None:
        self.calls: list[tuple[bool, set[str]]] = []
        self.failing = False
        self.remote_dir, self.local_dir = "bucket/study", Path("/study")

    def sync(self, *, force: bool = False, settled: Any = ()) -> list[str]:
        if self.failing:
            raise OSError("connection reset by peer")
        self.calls.append((force, set(settled)))
        return []


def _trial(name: str, status: str) -> SimpleNamespace:
    return SimpleNamespace(status=status, storage=SimpleNamespace(trial_dir_name=name))


def test_an_events_sync_skips_ended_trials_synced_since_and_walks_all_periodically(
        monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = SpyMirror()
    cb = MirrorCallback(mirror, full_every_s=60.0)  # type: ignore[arg-type]
    clock = [1000.0]
    monkeypatch.setattr("tune_app.callbacks.time.monotonic", lambda: clock[0])
    a, b, c = _trial("a", "TERMINATED"), _trial("b", "ERROR"), _trial("c", "RUNNING")
    trials = [a, b, c]
    cb.on_trial_result(0, trials, c, {})
    assert mirror.calls[-1] == (False, set()), "the first sync walks everything"
    cb.on_trial_result(0, trials, c, {})
    assert mirror.calls[-1] == (False, {"a", "b"}), "ended trials synced since they ended are skipped"
    cb.before_new_trial_starts()
    assert mirror.calls[-1] == (False, {"a", "b"})
    # c ends: its own event walks it, and it is settled from then on
    c.status = "TERMINATED"
    cb.on_trial_complete(0, trials, c)
    assert mirror.calls[-1] == (False, {"a", "b"})
    cb.on_trial_result(0, trials, _trial("d", "RUNNING"), {})
    assert mirror.calls[-1] == (False, {"a", "b", "c"})
    # b is retried after its error: walked again
    b.status = "RUNNING"
    cb.on_trial_result(0, trials, b, {})
    assert mirror.calls[-1] == (False, {"a", "c"})
    # a failed sync settles nothing new
    b.status = "TERMINATED"
    mirror.failing = True
    cb.on_trial_complete(0, trials, b)
    mirror.failing = False
    cb.on_trial_result(0, trials, _trial("d", "RUNNING"), {})
    assert mirror.calls[-1] == (False, {"a", "c"})
    # after full_every_s a sync walks everything again; the study's end forces one
    clock[0] += 61
    cb.on_trial_result(0, trials, _trial("d", "RUNNING"), {})
    assert mirror.calls[-1] == (False, set())
    cb.on_trial_result(0, trials, _trial("d", "RUNNING"), {})
    assert mirror.calls[-1] == (False, {"a", "b", "c"})
    cb.on_experiment_end(trials)
    assert mirror.calls[-1] == (True, set())
