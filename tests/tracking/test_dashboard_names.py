"""Trial task names for the Ray dashboard (``tune_app.tracking.dashboard``)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

from tune_app.tracking.dashboard import DRIVER_LOG, log_to_ray_session, trial_task_name


def _trial(last: dict[str, object] | None, best: float | None = None) -> SimpleNamespace:
    analysis = {"val_macro_f1": {"max": best, "min": 0.01}} if best is not None else {}
    return SimpleNamespace(trial_id="ab12c_00002", experiment_tag="3_lr=0.001", last_result=last,
                           run_metadata=SimpleNamespace(metric_analysis=analysis))


def test_train_task_names_trial_epoch_and_scores() -> None:
    name = trial_task_name(_trial({"epoch": 3, "val_macro_f1": 0.51234}, best=0.6), "train",
                           metric="val_macro_f1", max_epochs=8)
    assert name == "trial 3 (ab12c_00002): epoch 4/8, val_macro_f1 0.5123 (best 0.6)"
    open_ended = trial_task_name(_trial({"epoch": 3, "val_macro_f1": 0.5}, best=0.6), "train",
                                 metric="val_macro_f1", max_epochs=None)
    assert open_ended == "trial 3 (ab12c_00002): epoch 4, val_macro_f1 0.5 (best 0.6)"


def test_first_epoch_and_other_methods() -> None:
    assert trial_task_name(_trial(None), "train", metric="val_macro_f1",
                           max_epochs=8) == "trial 3 (ab12c_00002): epoch 1/8"
    assert trial_task_name(_trial({}), "reset", metric="m", max_epochs=8) == "trial 3 (ab12c_00002): reset"
    nan = trial_task_name(_trial({"epoch": 1, "val_macro_f1": float("nan")}), "train", metric="val_macro_f1", max_epochs=2)
    assert nan == "trial 3 (ab12c_00002): epoch 2/2, val_macro_f1 - (best -)"


def test_driver_log_in_session_folder_masks_secrets_and_replaces_earlier(tmp_path: Path) -> None:
    app = logging.getLogger("tune_app")
    level = app.level
    app.setLevel(logging.INFO)
    try:
        first = log_to_ray_session(tmp_path / "s1")
        second = log_to_ray_session(tmp_path / "s2")
        logging.getLogger("tune_app.test").info("trial 1/2 abc | finished; token hf_abcdefghijklmnopqrstuvwxyz0123")
        text = second.read_text()
        assert second == tmp_path / "s2" / "logs" / DRIVER_LOG and "trial 1/2 abc | finished" in text
        assert "hf_abcdefghijklmnopqrstuvwxyz0123" not in text
        assert first.read_text() == ""  # one session's copy at a time
    finally:
        for h in list(app.handlers):
            if type(h).__name__ == "_DriverLogHandler":
                app.removeHandler(h)
                h.close()
        app.setLevel(level)


def test_the_settings_name_trial_tasks_keeps_are_what_trial_task_name_takes() -> None:
    from tune_app.tracking import dashboard

    dashboard.name_trial_tasks(metric="val_macro_f1", max_epochs=3)
    name = trial_task_name(_trial({"epoch": 1, "val_macro_f1": 0.5}, best=0.5), "train", **dashboard._settings)
    assert name == "trial 3 (ab12c_00002): epoch 2/3, val_macro_f1 0.5 (best 0.5)"
