"""The Ray dashboard shows a running study: its URL is printed, the running trial's task
names the trial, the epoch it trains and its score, and the driver's lines are in the
session's logs. Read through Ray's state API (what the dashboard itself reads) while a
real study runs (each epoch held 2 s at the ``report`` failpoint so the study is seen live,
and each trial 12 s at ``trial_start``: the second trial keeps the study, and its dashboard,
up while the log agent catches up with the first trial's line; on a loaded machine the 8 s
the second trial took otherwise were not always enough).
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.integration.study_tools import end_group, start_run, tail, wait_for

pytestmark = pytest.mark.slow  # a dashboard and a 2-trial study held at each epoch: about 1.5 min

TASK = re.compile(r"^trial (\d+) \((\w+)\): epoch (\d+)/3, val_macro_f1 (\d[\d.e-]*) \(best (\d[\d.e-]*)\)$")


def test_dashboard_shows_trials_and_driver_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.util.state import list_nodes, list_tasks

    log = tmp_path / "run.log"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the study's, and the state API client's here
    proc = start_run(["tune.num_samples=2", "tune.max_epochs=3", "model=tiny", "data.num_posts=20",
                      "evaluation.on_finish=false", "tune.include_dashboard=true",
                      f"tune.storage_path={tmp_path}", "tune.name=dash"], log, failpoints="report=2,trial_start=12")
    try:
        url_line: list[str] = []

        def url_printed() -> bool:
            url_line[:] = re.findall(r"Ray dashboard: (http://[\d.:]+)", log.read_text(errors="replace"))
            return bool(url_line)

        wait_for(url_printed, 180, "the dashboard URL on the console", proc, log)
        address = url_line[0]
        assert "RAY_AUTH_MODE=disabled" in log.read_text()  # how to get in, as printed

        seen: dict[str, Any] = {}

        def named_task_with_score() -> bool:
            try:
                tasks = list_tasks(address=address, limit=1000, raise_on_missing_output=False)
            except Exception:  # the dashboard may not answer yet
                return False
            names = [t.name for t in tasks]
            scored = [m for m in map(TASK.match, names) if m and int(m.group(3)) >= 2]
            if scored:
                seen["task"] = scored[0]
            seen["names"] = names
            return bool(scored)

        wait_for(named_task_with_score, 240, "a trial task named with its epoch and score", proc, log)
        trial_dir_names = {p.name for p in tmp_path.joinpath("dash").iterdir()}
        assert any(seen["task"].group(2) in name for name in trial_dir_names), (seen["task"].group(0),
                                                                                trial_dir_names)

        node_id = list_nodes(address=address)[0].node_id

        def driver_log_has_trial_line() -> bool:
            # What the dashboard's Logs page reads: the node's log files, then the file's text.
            try:
                with urllib.request.urlopen(f"{address}/api/v0/logs?node_id={node_id}&glob=tune_app*") as r:
                    listed = json.load(r)["data"]["result"]
                if "tune_app_driver.log" not in [f for files in listed.values() for f in files]:
                    return False
                with urllib.request.urlopen(f"{address}/api/v0/logs/file?node_id={node_id}"
                                            "&filename=tune_app_driver.log&lines=1000") as r:
                    text = r.read().decode()
            except (OSError, KeyError, ValueError):  # the log agent may not answer yet
                return False
            return re.search(r"trial 1/2 \w+ \| finished 3/3 epochs", text) is not None

        wait_for(driver_log_has_trial_line, 240, "the first ended trial's line in tune_app_driver.log",
                 proc, log)
        assert proc.wait(timeout=300) == 0, tail(log)
    finally:
        end_group(proc)
