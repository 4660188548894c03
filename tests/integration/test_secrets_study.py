"""Planted secrets: a real study (and its resume) leaves none of them in any file or output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.study_tools import REPO, end_group, pin_scheduler, study_env

#: Secret-named environment variables; the password is a plain word (only the env rule knows it).
ENV_SECRETS = {"HF_TOKEN": "hf_PLANTEDenv123", "MY_SERVICE_PASSWORD": "PLANTEDpw4567"}
#: A failpoint spec that does not parse: every trial fails with it in the exception message.
FAILPOINT = "trial_start=sk-PLANTEDfp999/PLANTEDpw4567"
PLANTED = ["PLANTEDenv123", "PLANTEDpw4567", "PLANTEDfp999", "PLANTEDexp999"]


def _run(args: list[str], env: dict[str, str], out: Path, err: Path) -> int:
    with out.open("ab") as fo, err.open("ab") as fe:
        proc = subprocess.Popen([sys.executable, "-m", "tune_app.run", *pin_scheduler(args)], cwd=REPO, env=env,
                                stdout=fo, stderr=fe, start_new_session=True)
        try:
            return proc.wait(timeout=600)
        finally:
            end_group(proc)


def _leaks(root: Path) -> list[str]:
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [f"{secret} in {path.relative_to(root)}" for secret in PLANTED if secret.encode() in data]
    return found


@pytest.mark.slow
def test_planted_secrets_reach_no_file_and_no_output(tmp_path: Path) -> None:
    store, out, err = tmp_path / "store", tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    env = {**study_env(), **ENV_SECRETS, "TUNE_APP_FAILPOINTS": FAILPOINT}
    args = ["model=tiny", "data.num_posts=20", "tune.num_samples=2", "tune.max_epochs=1",
            f"tune.storage_path={store}", "tune.name=planted", "tracking.experiment_name=exp-sk-PLANTEDexp999",
            f"data.name=ds-{ENV_SECRETS['HF_TOKEN']}"]
    print(f"planted: env {ENV_SECRETS}, TUNE_APP_FAILPOINTS={FAILPOINT}, overrides {args[-2:]}")

    # 1. Every trial fails with a secret in its exception: error.txt/error.pkl, stderr, logs.
    assert _run(args, env, out, err) == 1, err.read_text()[-3000:]
    study = store / "planted"
    errors = list(study.glob("*/error.txt"))
    assert len(errors) == 2 and "ValueError: TUNE_APP_FAILPOINTS: 'trial_start=sk-***" in errors[0].read_text()
    assert list(study.glob("*/error.pkl")) and (store / "mlflow.db").is_file()
    assert "exp-sk-***" in (study / "study_config.yaml").read_text()

    # 2. The fixed study resumes from its redacted config and completes (training, MLflow, evaluation).
    env.pop("TUNE_APP_FAILPOINTS")
    assert _run([f"resume={study}"], env, out, err) == 0, err.read_text()[-3000:]
    assert (study / "evaluation_report.json").is_file()

    leaks = _leaks(tmp_path)
    print("leaks:", leaks or "none")
    assert not leaks
