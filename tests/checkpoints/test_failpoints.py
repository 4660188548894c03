"""Failpoints: named pauses from ``TUNE_APP_FAILPOINTS``, used by the SIGKILL fault tests."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from tune_app.checkpoints import failpoints
from tune_app.checkpoints.store import PRUNED_FILE, TMP_PREFIX, prune_checkpoint, save_checkpoint


def test_unset_or_other_points_do_not_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(failpoints.ENV_VAR, raising=False)
    start = time.monotonic()
    failpoints.pause("save")
    monkeypatch.setenv(failpoints.ENV_VAR, "prune=5")
    failpoints.pause("save")
    assert time.monotonic() - start < 0.5


def test_bad_spec_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(failpoints.ENV_VAR, "save=soon")
    with pytest.raises(ValueError, match="TUNE_APP_FAILPOINTS.*save=soon"):
        failpoints.pause("save")
    failpoints.pause("prepare")  # a malformed item fails only the point it names


def _seen_during(action: object, probe: object, seconds: float = 0.4) -> bool:
    """Run ``action`` in a thread; True if ``probe()`` held at some point while it ran."""
    seen = False
    thread = threading.Thread(target=action)  # type: ignore[arg-type]
    thread.start()
    while thread.is_alive():
        seen = seen or bool(probe())  # type: ignore[operator]
        time.sleep(0.01)
    thread.join()
    return seen


def test_save_and_prune_pause_at_their_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(failpoints.ENV_VAR, "save=0.3,prune=0.3")
    ckpt = tmp_path / "checkpoint_000001"
    state = {"w": torch.zeros(4), "b": torch.ones(2)}

    def save() -> None:
        save_checkpoint(ckpt, model_state=state, trainer_state={"epoch": 1}, compat={})

    assert _seen_during(save, lambda: any(p.name.startswith(TMP_PREFIX) for p in tmp_path.iterdir())
                        and not ckpt.exists())
    half = lambda: (ckpt / PRUNED_FILE).exists() and len(list(ckpt.iterdir())) > 1  # noqa: E731
    assert _seen_during(lambda: prune_checkpoint(ckpt, reason="test"), half)
    assert [p.name for p in ckpt.iterdir()] == [PRUNED_FILE]
