"""Tune's per-trial files (``params.json``, ``params.pkl``, ``result.json``, ``progress.csv``),
written straight into the study's trial folder.

Tune's own logger callbacks write these into the driver's staging folder, and every
experiment-state sync then copies the whole staging folder into the study: every file of
every trial at each sync, so a sync costs more with each trial (quadratic over a long
study). This callback replaces them (``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1``): each file
is written once, in place, and appended per result; the state sync copies only Tune's
few experiment-level files. No TensorBoard event files are written (MLflow tracks
metrics). A resumed trial appends to its files; the CSV header is written once, and an
epoch reported again after a resume is not written twice. Every string is sanitised
(``tune_app.tracking.sanitize``): no secret reaches these files.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ray.tune.logger import LoggerCallback
from ray.tune.utils.util import SafeFallbackEncoder

from tune_app.tracking.sanitize import sanitize_value

PARAMS_FILE = "params.json"
PARAMS_PICKLE = "params.pkl"
RESULT_FILE = "result.json"
PROGRESS_FILE = "progress.csv"


def _trial_dir(trial: Any) -> Path:
    path = Path(trial.storage.trial_fs_path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _flat(result: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in result.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _last_epoch(path: Path) -> int:
    """The ``epoch`` of the last line of ``result.json`` (0 when none)."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - 65536))
            lines = fh.read().splitlines()
        return int(json.loads(lines[-1]).get("epoch") or 0) if lines else 0
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


class StudyTrialFilesCallback(LoggerCallback):
    """Writes each trial's params, results (JSON lines) and progress (CSV) in the study.

    The last epoch written and the CSV header of each trial folder are read from disk
    once (a resumed study continues its files) and then kept in memory.
    """

    def __init__(self) -> None:
        self._last_epoch: dict[Path, int] = {}
        self._header: dict[Path, list[str] | None] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {}  # pickled into tuner.pkl: the caches are re-read from the files after a restore

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._last_epoch, self._header = {}, {}

    def _csv_header(self, progress: Path) -> list[str] | None:
        if progress not in self._header:
            header = None
            if progress.is_file() and progress.stat().st_size:
                with progress.open(encoding="utf-8", newline="") as fh:
                    header = next(csv.reader(fh), None)
            self._header[progress] = header
        return self._header[progress]

    def log_trial_start(self, trial: Any) -> None:
        import cloudpickle

        folder = _trial_dir(trial)
        config = sanitize_value(trial.config)
        (folder / PARAMS_FILE).write_text(json.dumps(config, indent=2, sort_keys=True, cls=SafeFallbackEncoder))
        with (folder / PARAMS_PICKLE).open("wb") as fh:
            cloudpickle.dump(config, fh)

    def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
        folder = _trial_dir(trial)
        epoch = int(result.get("epoch") or 0)
        if folder not in self._last_epoch:
            self._last_epoch[folder] = _last_epoch(folder / RESULT_FILE)
        if self._last_epoch[folder] >= epoch > 0:
            return  # an epoch reported again after a resume: each epoch is written once
        result = sanitize_value(result)
        with (folder / RESULT_FILE).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(result, cls=SafeFallbackEncoder) + "\n")
        self._last_epoch[folder] = max(self._last_epoch[folder], epoch)
        row = {k: v for k, v in _flat(result).items() if k != "config"}
        progress = folder / PROGRESS_FILE
        header = self._csv_header(progress)
        with progress.open("a", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=header or list(row), extrasaction="ignore")
            if header is None:
                writer.writeheader()
                self._header[progress] = list(row)
            writer.writerow(row)
