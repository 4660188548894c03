"""The study's searcher: Ray's ``OptunaSearch`` that tells Optuna which trials were stopped early.

Ray's ``OptunaSearch.on_trial_complete`` tells Optuna every trial that has a result is
``COMPLETE`` with its last value. A trial the early-stopping scheduler (ASHA / median) ended
at epoch 1 then counts as a finished trial scoring its epoch-1 value, and TPE learns that
the region it sampled is bad. ``EarlyStopAwareOptunaSearch`` tells such a trial ``PRUNED``
instead: TPE ranks pruned trials after every complete one, by how far they got and then by
their last intermediate value (Optuna's own handling of pruned trials).

* **Stopped** = it did not error and its last result's ``epoch`` is below its planned epochs
  (``tune_app.outcome.planned_epochs``: its sampled ``train.epochs``, else ``tune.max_epochs``),
  the same definition the schedulers record stops with. A trial that trained its planned
  epochs stays ``COMPLETE``; an errored one is ``FAIL``, even when it passes a result.
* **Intermediate values are per epoch**: the step is the result's ``epoch`` (Ray uses
  ``training_iteration``, which counts reports, e.g. a resumed trial's catch-up reports).
  Tune does not pass the result a scheduler stops a trial on to ``on_trial_result`` (ASHA
  also stops a trial that reached ``max_t``); it is reported on completion, so a pruned
  trial's value is the epoch it stopped at and every trial holds all its epochs.
* Only plain attributes are added (an int): Tune pickles the searcher with the experiment
  and ``Tuner.restore`` gets it back as is.
* A trial sampled after the saved state a restore brings back (named only by the trial
  journal, ``tune_app.trial_journal``) is taken back with :meth:`adopt`, from what
  :meth:`journal_entry` recorded when it was added: the same Optuna trial and the sampler's
  random state after sampling it.
* The Optuna study is mirrored into ``<study>/optuna.db`` (:meth:`sync_optuna_db`, called by
  ``state_sync`` right after Tune saved this searcher; see ``tune_app.optuna_store``).
"""

from __future__ import annotations

import logging
import math
import pickle
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.air.constants import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from tune_app import optuna_store, outcome, trial_journal

logger = logging.getLogger(__name__)

#: The trainable reports its epoch (1-based) with every result.
EPOCH = "epoch"
#: Optuna user attribute naming the Tune trial behind an Optuna trial.
TUNE_TRIAL_ID_ATTR = optuna_store.TUNE_TRIAL_ID_ATTR


def _epoch(result: dict[str, Any] | None) -> int | None:
    value = (result or {}).get(EPOCH)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class EarlyStopAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` whose scheduler-stopped trials are ``PRUNED`` in the Optuna study.

    ``max_epochs``: ``tune.max_epochs``, the planned epochs of a trial that does not sample
    ``train.epochs``. Everything else is ``OptunaSearch``'s.
    """

    def __init__(self, *args: Any, max_epochs: int, **kwargs: Any) -> None:
        self._max_epochs = int(max_epochs)
        super().__init__(*args, **kwargs)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """Ray's suggest; the Optuna trial records its Tune trial id (user attribute ``tune_trial_id``)."""
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if isinstance(config, dict) and ot_trial is not None:
            ot_trial.set_user_attr(TUNE_TRIAL_ID_ATTR, trial_id)
        return config

    def save(self, checkpoint_path: str) -> None:
        """Ray's save, without the ``optuna.Trial`` handles of trials already told.

        Tune pickles the searcher at every state sync. Ray keeps a handle (with a copy of the
        trial as it was when sampled) for every trial ever suggested: about half of the
        pickle, growing with the study. A told trial's handle is never used again (Ray's
        ``on_trial_result`` / ``on_trial_complete`` return early for ``_completed_trials``),
        and the trial itself stays in the Optuna study, with its Tune trial id as a user attribute.
        """
        state = self.__dict__.copy()
        state["_ot_trials"] = {k: v for k, v in self._ot_trials.items() if k not in self._completed_trials}
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def journal_entry(self, trial_id: str) -> dict[str, Any] | None:
        """What :meth:`adopt` needs to take ``trial_id`` back after a restore (``tune_app.trial_journal``).

        The Optuna trial as sampled (params, distributions, attributes, number) and the sampler
        as it is now (its random state, after sampling it), pickled. None for a trial this
        searcher did not sample.
        """
        ot_trial = self._ot_trials.get(trial_id)
        study: Any = self._ot_study
        if ot_trial is None or study is None:
            return None
        frozen = study._storage.get_trial(ot_trial._trial_id)
        return {"optuna_trial": trial_journal.encode_blob(frozen),
                "sampler": trial_journal.encode_blob(study.sampler)}

    def adopt(self, trial_id: str, entry: dict[str, Any]) -> bool:
        """Take back a trial sampled after the saved state this searcher was restored from.

        Called on ``resume=`` for each journaled trial Tune's saved state lacked, in the order
        they were sampled: the Optuna study gets the trial again (same number, params,
        distributions and attributes, RUNNING), Ray's handle for it is made, and the sampler
        takes the random state it had after sampling it, so the study goes on exactly as if it
        had not been interrupted. False (nothing changed) for a trial the searcher knows already.
        """
        study: Any = self._ot_study
        if study is None or trial_id in self._ot_trials or trial_id in self._completed_trials:
            return False
        frozen = trial_journal.decode_blob(entry["optuna_trial"])
        storage_id = study._storage.create_new_trial(study._study_id, template_trial=frozen)
        self._ot_trials[trial_id] = optuna.Trial(study, storage_id)
        number = study._storage.get_trial(storage_id).number
        if number != frozen.number:
            logger.warning("trial %s rejoined the Optuna study as number %d (it was %d)", trial_id, number,
                           frozen.number)
        sampler = trial_journal.decode_blob(entry["sampler"])
        study.sampler = sampler
        self._sampler = sampler
        return True

    def sync_optuna_db(self, study_dir: Path) -> bool:
        """Mirror the Optuna study into ``<study_dir>/optuna.db`` (``tune_app.optuna_store``); never raises.

        Called right after Tune saved this searcher into ``study_dir``, so the DB never holds a
        trial or a tell that Tune's saved state lacks. False when the DB could not be written.
        """
        study = self._ot_study
        return study is not None and optuna_store.mirror_study(study_dir, study)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        epoch = _epoch(result)
        if epoch is not None:
            result = {**result, TRAINING_ITERATION: epoch}
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if error:  # FAIL, even with a result (Ray's tells an errored trial with a value COMPLETE)
            super().on_trial_complete(trial_id, result=None, error=True)
            return
        ot_trial = self._ot_trials.get(trial_id)
        epoch = _epoch(result)
        if ot_trial is None or epoch is None or trial_id in self._completed_trials or isinstance(self.metric, list):
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        # Tune never passes the result the scheduler stops a trial on (ASHA stops a finished one
        # at max_t too) to on_trial_result: it is the trial's last intermediate value.
        self._report_once(ot_trial, (result or {}).get(self.metric), epoch)
        if epoch >= outcome.planned_epochs(ot_trial.params, self._max_epochs):
            super().on_trial_complete(trial_id, result=result)
            return
        try:
            study: Any = self._ot_study  # Ray types it None until the space is set
            study.tell(ot_trial, state=TrialState.PRUNED)
        except Exception as exc:  # noqa: BLE001 - as Ray's own tell: a searcher error must not end the study
            logger.warning("could not tell Optuna that trial %s was stopped early: %s", trial_id, exc)
        self._completed_trials.add(trial_id)

    def _report_once(self, ot_trial: Any, value: Any, epoch: int) -> None:
        if not isinstance(value, int | float) or math.isnan(value) or epoch in self._reported(ot_trial):
            return
        try:
            ot_trial.report(float(value), epoch)
        except Exception as exc:  # noqa: BLE001 - the trial is still told its state
            logger.warning("could not report epoch %d of Optuna trial %s: %s", epoch, ot_trial.number, exc)

    def _reported(self, ot_trial: Any) -> dict[int, float]:
        """The intermediate values the study holds for ``ot_trial`` (step -> value)."""
        study: Any = self._ot_study
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.number == ot_trial.number:
                return dict(frozen.intermediate_values)
        return {}
