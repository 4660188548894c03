"""``tune_app.run --help`` / ``--cfg job`` and "did you mean" for misspelt keys and options.

The expected groups, options and defaults are read here from ``configs/`` and
``searchspaces/`` directly, so a new option file or key missing from the help fails.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tune_app import run
from tune_app.cli_help import cfg_text, parse_cfg
from tune_app.config import AppConfig, ConfigError, compose

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def _expected_groups() -> dict[str, tuple[set[str], str]]:
    """group -> (option names, default option), from the folders and configs/config.yaml."""
    defaults: dict[str, str] = {}
    for entry in yaml.safe_load((CONFIGS / "config.yaml").read_text())["defaults"]:
        if isinstance(entry, dict):
            defaults.update({str(k): str(v) for k, v in entry.items()})
    groups = {d.name: ({p.stem for p in d.glob("*.yaml")}, defaults[d.name])
              for d in CONFIGS.iterdir() if d.is_dir() and any(d.glob("*.yaml"))}
    spaces = {p.stem for p in (REPO / "searchspaces").glob("*.py") if not p.stem.startswith("_")}
    groups["searchspace"] = (spaces, str(yaml.safe_load((CONFIGS / "config.yaml").read_text())["searchspace"]))
    return groups


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# --- --help ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def help_run() -> subprocess.CompletedProcess[str]:
    """``python -m tune_app.run --help`` in a fresh interpreter that then reports heavy imports."""
    code = ("import runpy, sys\nsys.argv = ['tune_app.run', '--help']\n"
            "try:\n    runpy.run_module('tune_app.run', run_name='__main__')\n"
            "except SystemExit as exc:\n    code = exc.code\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'ray', 'optuna', 'mlflow') if m in sys.modules)\n"
            "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\nsys.exit(code)\n")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_help_lists_every_group_with_its_options_and_default(help_run: subprocess.CompletedProcess[str]) -> None:
    assert help_run.returncode == 0, help_run.stderr
    for group, (options, default) in _expected_groups().items():
        line = next((ln for ln in help_run.stdout.splitlines() if ln.startswith(f"  {group} ")), None)
        assert line is not None, f"config group {group} missing from --help"
        listed = {o.strip() for o in line.split(None, 1)[1].split("(")[0].split(",")}
        assert {o.rstrip("*") for o in listed} == options, f"{group}: {line}"
        assert f"{default}*" in listed, f"{group}: default {default} not marked in {line}"
        assert sum(o.endswith("*") for o in listed) == 1, line


def test_help_lists_every_key_with_its_default(help_run: subprocess.CompletedProcess[str]) -> None:
    text = help_run.stdout
    defaults = compose([])
    for spec in dataclasses.fields(AppConfig):
        value = getattr(defaults, spec.name)
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                assert re.search(rf"(?<![\w.]){spec.name}\.{f.name}=\S", text), f"{spec.name}.{f.name} missing"
        else:
            assert re.search(rf"(?<![\w.]){spec.name}=\S", text), f"{spec.name} missing"
    # values as composed (the tune group's file, the model file's train.lr), in override syntax
    for shown in (f"tune.num_samples={defaults.tune.num_samples}", f"train.lr={defaults.train.lr}",
                  f"model.name={defaults.model.name}", "model.revision=null", "tune.reuse_actors=true",
                  "data.split_ratios=[0.7,0.15,0.15]", "seed=0"):
        assert re.search(rf"(?<![\w.]){re.escape(shown)}(\s|$)", text, re.M), f"{shown} not in --help"
    assert "resume=<study dir>" in text and "--cfg job" in text


def test_help_is_fast_starts_nothing_and_exits_0(help_run: subprocess.CompletedProcess[str],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert help_run.stderr.strip().splitlines()[-1] == "HEAVY=", help_run.stderr
    code, out, _ = _main(["-h"], capsys)
    assert code == 0 and out.startswith("usage: python -m tune_app.run")


# --- --cfg job --------------------------------------------------------------------------
def test_cfg_job_prints_the_composed_config_with_overrides(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = _main(["--cfg", "job", "tune.num_samples=7", "model=minilm",
                            f"tune.storage_path={tmp_path / 'store'}"], capsys)
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert printed["tune"]["num_samples"] == 7 and printed["model"]["name"] == "minilm"
    assert printed["train"]["lr"] == compose(["model=minilm"]).train.lr  # the model file's own defaults
    assert set(printed) == {f.name for f in dataclasses.fields(AppConfig)}
    assert not (tmp_path / "store").exists(), "--cfg job must not create the study"
    assert yaml.safe_load(_main(["--cfg=job"], capsys)[1]) == yaml.safe_load(compose([]).to_yaml())


def test_cfg_job_bad_override_is_the_usual_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _main(["--cfg", "job", "tune.nmu_samples=3"], capsys)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [err.strip()] and err.startswith("error: unknown key 'tune.nmu_samples'")
    code, out, err = _main(["--cfg", "all"], capsys)
    assert code == 2 and "--cfg job" in err
    with pytest.raises(ConfigError, match="only `--cfg job`"):
        parse_cfg(["--cfg"])


def test_cfg_job_of_a_study_shows_its_saved_config(tmp_path: Path) -> None:
    study = tmp_path / "study"
    study.mkdir()
    (study / "study_config.yaml").write_text(compose(["tune.num_samples=11", "tune.name=study"]).to_yaml())
    assert yaml.safe_load(cfg_text(["--cfg", "job", f"resume={study}"]))["tune"]["num_samples"] == 11
    with pytest.raises(ConfigError, match="resume= takes no other overrides"):
        cfg_text(["--cfg", "job", f"resume={study}", "seed=1"])


# --- did you mean -------------------------------------------------------------------------
@pytest.mark.parametrize(("override", "suggestion"), [
    ("tune.nmu_samples=3", "did you mean tune.num_samples?"),     # a misspelt key
    ("tnue.num_samples=3", "did you mean tune.num_samples?"),     # a misspelt section
    ("tnue.nmu_samples=3", "did you mean tune.num_samples?"),     # both
    ("seeed=1", "did you mean seed?"),                            # a top-level key
    ("+tune.nmu_samples=3", "did you mean tune.num_samples?"),    # an added key
    ("model=tinny", "did you mean model=tiny?"),                  # a missing group option
    ("retention=agressive", "did you mean retention=aggressive?"),
    ("model=Tiny", "did you mean model=tiny?"),
    ("searchspace=smal", "did you mean searchspace=small?"),      # a validated choice
    ("tune.scheduler=ahsa", "did you mean tune.scheduler=asha?"),
])
def test_misspelling_gets_a_did_you_mean(override: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as info:
        compose([override])
    message = str(info.value)
    assert suggestion in message and "\n" not in message
    assert "allowed" in message  # the full list is still there


@pytest.mark.parametrize("override", ["foo=1", "tune.nope=1", "model=zzz", "seed.x=1"])
def test_no_suggestion_when_nothing_is_close(override: str) -> None:
    with pytest.raises(ConfigError) as info:
        compose([override])
    assert "did you mean" not in str(info.value)


def test_did_you_mean_reaches_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _main(["tnue.num_samples=3"], capsys)
    assert code == 2 and "did you mean tune.num_samples?" in err and len(err.strip().splitlines()) == 1
