"""TrimEndedTrialState: an ended trial's entry in Tune's state keeps only what is still read."""

from __future__ import annotations

from types import SimpleNamespace

from ray.tune.trainable.metadata import _TrainingRunMetadata

from tune_app.state_sync import TrimEndedTrialState


def test_an_ended_trial_keeps_only_the_study_metric_statistics() -> None:
    meta = _TrainingRunMetadata()
    for step in (1, 2, 3):
        for key in ("val_macro_f1", "epoch", "training_iteration", "val_loss", "train_loss", "epoch_time_s"):
            meta.update_metric(key, 0.1 * step, step=step)
    before = len(meta.get_json_state())
    trial = SimpleNamespace(run_metadata=meta)
    TrimEndedTrialState("val_macro_f1").on_trial_complete(0, [], trial)
    assert set(meta.metric_analysis) == set(meta.metric_n_steps) == {"val_macro_f1", "epoch", "training_iteration"}
    assert meta.metric_analysis["val_macro_f1"]["max"] == 0.1 * 3
    assert len(meta.get_json_state()) < before  # the cached JSON Tune writes was invalidated and shrank


def test_a_failed_trial_is_trimmed_too_and_a_trial_without_metadata_is_skipped() -> None:
    meta = _TrainingRunMetadata()
    meta.update_metric("val_loss", 1.0)
    TrimEndedTrialState("val_macro_f1").on_trial_error(0, [], SimpleNamespace(run_metadata=meta))
    assert meta.metric_analysis == {}
    TrimEndedTrialState("val_macro_f1").on_trial_complete(0, [], SimpleNamespace())  # no metadata: no error
