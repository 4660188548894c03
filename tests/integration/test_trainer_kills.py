"""SIGKILL a real study's whole process group at random moments (>= 20 times), resume each time.

The kills cycle through three kinds: the moment a save is seen in progress (a ``tmp-*``
folder in a trial folder), the moment a prune is seen half done (a ``PRUNED`` marker
beside files not yet deleted), and after a random delay once the trainable runs. The
tiny model saves and prunes in milliseconds, so the failpoints ``save`` and ``prune``
(``TUNE_APP_FAILPOINTS``) hold each one open for a moment: the kills land inside them
for real, as well as during epochs and between steps. After every kill, before resuming:
every visible ``checkpoint_*`` verifies or is a tombstone. At the end every study
completes its trials with history 1..N, MLflow has one run per trial and no step twice,
and every resume loaded a checkpoint that was valid when it resumed. If a study
finishes before 20 kills, a second one is started and killed the same way.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.integration.study_tools import (
    end_group,
    kill_group,
    mlflow_runs,
    start_run,
    tail,
    trial_dirs,
    trial_state,
)
from tune_app.checkpoints.store import PRUNED_FILE, TMP_PREFIX, is_tombstone, verify_checkpoint

pytestmark = pytest.mark.slow
SAMPLES, EPOCHS, KILLS, SEED = 3, 4, 20, 20260101


def _starts(study: Path) -> int:
    return sum(len(trial_state(t).get("starts", [])) for t in trial_dirs(study)) if study.is_dir() else 0


def _saving(study: Path) -> bool:
    with contextlib.suppress(FileNotFoundError):
        for trial in os.scandir(study):
            if trial.is_dir():
                for entry in os.scandir(trial.path):
                    if entry.name.startswith(TMP_PREFIX):
                        return True
    return False


def _snapshot(study: Path) -> tuple[dict[str, set[str]], set[Path], set[Path]]:
    """Valid checkpoints per trial (asserts no half-written one is visible); the leftovers of
    interrupted saves (temp folders) and of interrupted prunes (marker temps, half-pruned tombstones)."""
    valid: dict[str, set[str]] = {}
    mid_save: set[Path] = set()
    mid_prune: set[Path] = set()
    for trial in trial_dirs(study):
        valid[trial.name] = set()
        for entry in trial.iterdir():
            if entry.name.startswith(f"{TMP_PREFIX}PRUNED"):
                mid_prune.add(entry)
            elif entry.name.startswith(TMP_PREFIX):
                mid_save.add(entry)
        for ckpt in trial.glob("checkpoint_*"):
            if is_tombstone(ckpt):
                if any(e.name != PRUNED_FILE for e in ckpt.iterdir()):
                    mid_prune.add(ckpt)
                continue
            check = verify_checkpoint(ckpt)
            assert check.ok, f"half-written checkpoint visible after a kill: {ckpt}: {check}"
            valid[trial.name].add(ckpt.name)
    return valid, mid_save, mid_prune


def _wait(proc: subprocess.Popen[bytes], cond: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if callable(cond) and cond():
            return True
        time.sleep(0.005)
    return False


def _half_pruned(study: Path) -> set[str]:
    """Checkpoint folders holding the ``PRUNED`` marker beside files not deleted yet."""
    found: set[str] = set()
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for trial in os.scandir(study):
            if trial.is_dir():
                for entry in os.scandir(trial.path):
                    if entry.name.startswith("checkpoint_") and os.path.exists(os.path.join(entry.path, PRUNED_FILE)) \
                            and len(os.listdir(entry.path)) > 1:
                        found.add(entry.path)
    return found


def _run_once(args: list[str], study: Path, log: Path, kill: str | float | None) -> int:
    """One ``tune_app.run``; once its trainable runs, SIGKILL the group inside a save ("save"), inside
    a prune ("prune") or after ``kill`` seconds; None: let it finish. Returns the exit status (-9 when
    killed)."""
    before = _starts(study)
    left_before = _half_pruned(study)  # from an earlier kill: not this run's prune
    proc = start_run(args, log)
    try:
        running = _wait(proc, lambda: _starts(study) > before, 300)  # the trainable appended to "starts"
        if running and kill is not None:
            if kill == "save":
                _wait(proc, lambda: _saving(study), 30.0)
            elif kill == "prune":
                _wait(proc, lambda: bool(_half_pruned(study) - left_before), 30.0)
            else:
                _wait(proc, lambda: False, float(kill))
            if proc.poll() is None:
                kill_group(proc)
        return proc.wait(timeout=600)
    finally:
        end_group(proc)


def _check_study(storage: Path, study: Path, name: str, snapshots: list[tuple[float, dict[str, set[str]]]]) -> None:
    trials = trial_dirs(study)
    assert len(trials) == SAMPLES, [t.name for t in trials]
    for trial in trials:
        state = trial_state(trial)
        assert state["status"] == "completed", trial.name
        assert [h["epoch"] for h in state["history"]] == list(range(1, EPOCHS + 1)), (trial.name, state["history"])
        for start in state["starts"][1:]:
            if start["resumed_from"] is None:
                continue
            started = datetime.strptime(start["time"], "%Y-%m-%dT%H:%M:%S").timestamp()
            before = [valid for t, valid in snapshots if t <= started + 1]
            assert before, (trial.name, start)
            assert start["resumed_from"] in before[-1].get(trial.name, set()), \
                f"{trial.name} resumed from {start['resumed_from']}, not valid when it resumed"
        for ckpt in trial.glob("checkpoint_*"):
            assert is_tombstone(ckpt) or verify_checkpoint(ckpt).ok
    runs = [r for r in mlflow_runs(storage, name) if "tune_app.trial_id" in r["tags"]]
    assert len(runs) == SAMPLES, "one MLflow run per trial"
    assert len({r["tags"]["tune_app.trial_id"] for r in runs}) == SAMPLES
    for r in runs:
        for key in ("val_macro_f1", "epoch"):
            assert r["steps"][key] == list(range(1, EPOCHS + 1)), (key, r["steps"][key])


def _kind(kills: int, rng: random.Random) -> str | float:
    return ("save", "prune", rng.uniform(0.2, 3.0))[kills % 3]


def test_twenty_random_sigkills_leave_a_resumable_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNE_APP_FAILPOINTS", "save=0.5,prune=0.5")
    rng = random.Random(SEED)
    storage = tmp_path / "experiments"
    kills = mid_save = mid_prune = 0
    seen_save: set[Path] = set()
    seen_prune: set[Path] = set()
    studies: list[tuple[str, list[tuple[float, dict[str, set[str]]]]]] = []
    started_at = time.monotonic()
    while kills < KILLS:
        name = f"kills{len(studies)}"
        study = storage / name
        snapshots: list[tuple[float, dict[str, set[str]]]] = []
        studies.append((name, snapshots))
        args = [f"tune.num_samples={SAMPLES}", f"tune.max_epochs={EPOCHS}", f"tune.storage_path={storage}",
                f"tune.name={name}"]
        while True:
            log = tmp_path / f"{name}-{len(snapshots)}.log"
            rc = _run_once(args, study, log, kill=None if kills >= KILLS else _kind(kills, rng))
            args = [f"resume={study}"]
            kills += rc == -signal.SIGKILL
            if rc == -signal.SIGKILL:
                valid, saving, pruning = _snapshot(study)
                snapshots.append((time.time(), valid))
                mid_save += bool(saving - seen_save)  # this kill left a new leftover
                mid_prune += bool(pruning - seen_prune)
                seen_save |= saving
                seen_prune |= pruning
                continue
            assert rc == 0, f"rc={rc}\n{tail(log)}"
            break
        _check_study(storage, study, name, snapshots)
    elapsed = time.monotonic() - started_at
    print(f"\n{kills} SIGKILLs over {len(studies)} studies in {elapsed:.0f} s: {mid_save} landed mid-save "
          f"(temp folder left), {mid_prune} mid-prune (half-pruned tombstone or marker temp)")
    assert kills >= KILLS
    assert mid_save >= KILLS // 3 - 1, f"only {mid_save} kills landed during a save"
    assert mid_prune >= KILLS // 3 - 1, f"only {mid_prune} kills landed during a prune"
