"""Bad input is one clear line and exit 2 (issue 14): a table of command lines.

Each row is the argv of an entry point, the substrings its one-line error must hold (the
key or file that is wrong, and often the fix) and, for every row, the promise that nothing
was created or removed on disk (no study folder for a study that never started). Most rows
run ``main(argv)`` in-process and fail in the driver in well under a second; the rows that
need Ray (resources) or a signal (Ctrl-C) run the real CLI in a subprocess.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.integration.study_tools import REPO, end_group, study_env, tmpfs
from tune_app import cleanup, evaluate, run
from tune_app.checkpoints.store import TMP_PREFIX
from tune_app.config import compose
from tune_app.data.schema import ANNOTATIONS_COLUMNS, ANNOTATIONS_FILE, POSTS_COLUMNS, POSTS_FILE


class Row(NamedTuple):
    """``argv`` (``{name}`` fields filled from :func:`places`) and what stderr's error must contain."""

    argv: str
    must: tuple[str, ...]
    entry: str = "run"


def _start(*overrides: str) -> str:
    return " | ".join((*overrides, "tune.storage_path={store}"))


# One Row per bad input; argv is split on " | " (so that a value may hold spaces).
ROWS: dict[str, Row] = {
    # values of the wrong type
    "seed-not-int": Row(_start("seed=abc"), ("seed='abc'", "integer", "seed=0")),
    "sampler-seed-not-int": Row(_start("tune.sampler_seed=xyz"), ("tune.sampler_seed='xyz'", "integer")),
    "num-samples-not-int": Row(_start("tune.num_samples=abc"), ("tune.num_samples='abc'",)),
    "dashboard-not-bool": Row(_start("tune.include_dashboard=maybe"),
                              ("tune.include_dashboard='maybe'", "true or false")),
    "reuse-actors-not-bool": Row(_start("tune.reuse_actors=2"), ("tune.reuse_actors=2", "true or false")),
    "lr-not-number": Row(_start("train.lr=fast"), ("train.lr='fast'", "number")),
    "split-ratios-not-list": Row(_start("data.split_ratios=0.7"), ("data.split_ratios=0.7", "list")),
    "cpus-per-trial-zero": Row(_start("tune.cpus_per_trial=0"), ("tune.cpus_per_trial=0", "all")),
    # out of range / not allowed
    "num-samples-negative": Row(_start("tune.num_samples=-1"), ("tune.num_samples=-1", ">= 1")),
    "max-epochs-zero": Row(_start("tune.max_epochs=0"), ("tune.max_epochs=0",)),
    "epochs-over-max": Row(_start("tune.max_epochs=2", "train.epochs=3"), ("train.epochs=3", "tune.max_epochs")),
    "dropout-fraction": Row(_start("model.dropout=1.5"), ("model.dropout=1.5", "[0.0, 0.9]")),
    "warmup-fraction": Row(_start("train.warmup_ratio=0.9"), ("train.warmup_ratio=0.9",)),
    "augment-probability": Row(_start("augment.probability=0.9"), ("augment.probability=0.9",)),
    "lr-range": Row(_start("train.lr=2"), ("train.lr=2", "(0, 1)")),
    "split-ratios-sum": Row(_start("data.split_ratios=[0.5,0.4,0.4]"), ("data.split_ratios",)),
    "num-posts-small": Row(_start("data.num_posts=5"), ("data.num_posts=5", ">= 20")),
    "scheduler-name": Row(_start("tune.scheduler=hyperband"), ("tune.scheduler='hyperband'", "asha")),
    "train-scheduler-name": Row(_start("train.scheduler=step"), ("train.scheduler='step'", "cosine")),
    "grace-period-zero": Row(_start("tune.grace_period=0"), ("tune.grace_period=0",)),
    "reduction-factor": Row(_start("tune.reduction_factor=1"), ("tune.reduction_factor=1",)),
    "metric-name": Row(_start("tune.metric=loss"), ("tune.metric='loss'", "val_macro_f1")),
    "mode-min": Row(_start("tune.mode=min"), ("tune.mode='min'",)),
    "precision-name": Row(_start("train.precision=fp8"), ("train.precision='fp8'", "bf16")),
    "device-name": Row(_start("train.device=gpu"), ("train.device='gpu'", "cuda")),
    "keep-best-k-over-max": Row(_start("retention.keep_best_k=3"), ("retention.keep_best_k",)),
    "keep-last-n-negative": Row(_start("retention.keep_last_n=-1"), ("retention.keep_last_n=-1",)),
    "max-total-size-zero": Row(_start("retention.max_total_size_gb=0"), ("retention.max_total_size_gb=0",)),
    "name-with-slash": Row(_start("tune.name=a/b"), ("tune.name='a/b'",)),
    # unknown keys and options
    "unknown-key": Row(_start("foo=1"), ("'foo'", "spelling")),
    "unknown-sub-key": Row(_start("tune.nope=1"), ("'tune.nope'", "num_samples")),
    "model-option": Row(_start("model=nope"), ("model='nope'", "tiny")),
    "retention-option": Row(_start("retention=forever"), ("retention='forever'", "aggressive")),
    "searchspace-name": Row(_start("searchspace=huge"), ("searchspace='huge'", "small")),
    # unquoted values with spaces, Hydra grammar
    "value-with-spaces": Row(_start("tune.name=my", "study"), ("'study'", "quote it", "tune.name='my study'")),
    "value-with-parens": Row(_start("tune.name=a(b"), ("tune.name", "quote it")),
    # paths
    "storage-empty": Row("tune.storage_path=", ("tune.storage_path=''", "tune.storage_path=experiments")),
    "storage-is-file": Row("tune.storage_path={file}", ("tune.storage_path=", "is a file")),
    "storage-under-file": Row("tune.storage_path={file}/studies", ("tune.storage_path=", "is a file")),
    "storage-read-only": Row("tune.storage_path={readonly}/studies", ("tune.storage_path=", "not writable")),
    "study-folder-is-file": Row("tune.storage_path={tmp} | tune.name=afile", ("tune.name='afile'", "is a file")),
    "study-exists": Row("tune.storage_path={tmp} | tune.name=study", ("already exists", "resume=")),
    "local-without-path": Row(_start("data=local"), ("data.path",)),
    "data-path-without-local": Row(_start("data.path={tmp}"), ("data.path=", "data=local", "ignore")),
    "data-path-missing": Row(_start("data=local", "data.path={tmp}/nope"), ("data.path=", "not a directory")),
    "posts-header-only": Row(_start("data=local", "data.path={header_posts}"), (POSTS_FILE, "no rows")),
    "annotations-header-only": Row(_start("data=local", "data.path={header_annotations}"),
                                   (ANNOTATIONS_FILE, "no rows")),
    # resume
    "resume-missing-folder": Row("resume={tmp}/nope", ("resume=", "no such folder")),
    "resume-not-a-study": Row("resume={tmp}", ("resume=", "not a tune_app study")),
    "resume-with-overrides": Row("resume={tmp}/study | tune.num_samples=9", ("resume=", "tune.num_samples=9")),
    "resume-empty-config": Row("resume={tmp}/empty", ("study_config.yaml is empty", "trial_config.yaml")),
    "resume-invalid-yaml": Row("resume={tmp}/badyaml", ("study_config.yaml is corrupt", "not readable YAML", "line 2")),
    "resume-yaml-list": Row("resume={tmp}/listyaml", ("study_config.yaml is corrupt", "mapping")),
    "resume-unknown-key": Row("resume={tmp}/unknownkey", ("study_config.yaml is corrupt", "tune.bogus")),
    "resume-wrong-type": Row("resume={tmp}/wrongtype", ("study_config.yaml is corrupt", "tune.num_samples='four'")),
    # evaluate and cleanup
    "evaluate-unknown-flag": Row("--study | {tmp}/study | --bogus", ("--bogus",), "evaluate"),
    "evaluate-no-study-flag": Row("--split | test", ("--study",), "evaluate"),
    "evaluate-bad-split": Row("--study | {tmp}/study | --split | train", ("--split", "'train'"), "evaluate"),
    "evaluate-missing-study": Row("--study | {tmp}/nope", ("nope", "not a tune_app study"), "evaluate"),
    "evaluate-corrupt-config": Row("--study | {tmp}/listyaml", ("study_config.yaml is corrupt",), "evaluate"),
    "cleanup-unknown-flag": Row("--bogus", ("--bogus",), "cleanup"),
    "cleanup-bad-age": Row("--tmp-min-age | soon", ("--tmp-min-age", "'soon'"), "cleanup"),
    "cleanup-missing-study": Row("--study | {tmp}/nope", ("--study", "no such folder"), "cleanup"),
    "cleanup-not-a-study": Row("--study | {header_posts}", ("--study", "study_config.yaml is missing"), "cleanup"),
    "cleanup-corrupt-config": Row("--study | {tmp}/badyaml", ("study_config.yaml is corrupt",), "cleanup"),
}

MAINS: dict[str, Callable[[list[str] | None], int]] = {"run": run.main, "evaluate": evaluate.main,
                                                        "cleanup": cleanup.main}


def _data_dir(root: Path, *, posts_rows: bool, annotation_rows: bool) -> Path:
    root.mkdir()
    posts = ",".join(POSTS_COLUMNS) + "\n" + ("p1,I could not sleep at all.\n" if posts_rows else "")
    (root / POSTS_FILE).write_text(posts)
    row = ",".join("p1" if c == "post_id" else "x" for c in ANNOTATIONS_COLUMNS) + "\n"
    (root / ANNOTATIONS_FILE).write_text(",".join(ANNOTATIONS_COLUMNS) + "\n" + (row if annotation_rows else ""))
    return root


def _study_with_config(folder: Path, text: str) -> Path:
    folder.mkdir()
    (folder / "study_config.yaml").write_text(text)
    return folder


@contextlib.contextmanager
def _read_only_dir(path: Path) -> Iterator[Path]:
    """A folder nobody may write to: a read-only tmpfs as root (chmod does not stop root), else chmod."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    with tmpfs(path, "ro,size=1m"):
        yield path


def places(tmp: Path, stack: contextlib.ExitStack, argv: str) -> dict[str, str]:
    """The files and folders a row's argv names, built under ``tmp``."""
    good = compose([f"tune.storage_path={tmp}", "tune.name=study"]).to_yaml()
    _study_with_config(tmp / "study", good)
    _study_with_config(tmp / "empty", "")
    _study_with_config(tmp / "badyaml", "tune: {num_samples: 4\nmodel: [\n")
    _study_with_config(tmp / "listyaml", "- model\n- tune\n")
    _study_with_config(tmp / "unknownkey", good.replace("tune:\n", "tune:\n  bogus: 1\n"))
    _study_with_config(tmp / "wrongtype", good.replace("num_samples: 4", "num_samples: four"))
    (tmp / "afile").write_text("not a folder\n")
    return {
        "tmp": str(tmp),
        "store": str(tmp / "store"),
        "file": str(tmp / "afile"),
        "header_posts": str(_data_dir(tmp / "header_posts", posts_rows=False, annotation_rows=True)),
        "header_annotations": str(_data_dir(tmp / "header_ann", posts_rows=True, annotation_rows=False)),
        "readonly": str(stack.enter_context(_read_only_dir(tmp / "ro"))) if "{readonly}" in argv else "",
    }


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _call(entry: str, argv: list[str]) -> int:
    try:
        return MAINS[entry](argv)
    except SystemExit as exc:  # argparse
        return int(exc.code or 0)


@pytest.mark.parametrize("name", list(ROWS))
def test_bad_input_is_one_line_and_exit_2(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    row = ROWS[name]
    monkeypatch.chdir(tmp_path)  # a study written into the current folder would show up in the snapshot
    with contextlib.ExitStack() as stack:
        fields = places(tmp_path, stack, row.argv)
        argv = [a.format(**fields) for a in row.argv.split(" | ")]
        before = _snapshot(tmp_path)
        capsys.readouterr()
        started = time.monotonic()
        code = _call(row.entry, argv)
        elapsed = time.monotonic() - started
        out, err = capsys.readouterr()
        assert _snapshot(tmp_path) == before, f"{argv} created or removed files"
    assert code == 2, f"{argv}: exit {code}\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}"
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    message = lines[-1]
    assert message.startswith(("error:", f"python -m tune_app.{row.entry}: error:")), err
    assert len([line for line in lines if "error:" in line]) == 1, err
    for part in row.must:
        assert part in message, f"{part!r} not in {message!r}"
    assert elapsed < 10, f"{argv} took {elapsed:.1f} s to fail"


def test_the_table_is_at_least_40_rows() -> None:
    assert len(ROWS) + len(SUBPROCESS_ROWS) >= 40


def test_train_device_cuda_needs_a_gpu_for_the_trial() -> None:
    from tune_app.config import ConfigError
    from tune_app.tuner import trial_resources

    cfg = compose(["train.device=cuda"])
    with pytest.raises(ConfigError, match=r"train.device=cuda but Ray sees 0 GPU\(s\).*train.device=auto"):
        trial_resources(cfg, {"CPU": 2.0})
    with pytest.raises(ConfigError, match=r"train.device=cuda but tune.gpus_per_trial=0"):
        trial_resources(compose(["train.device=cuda", "tune.gpus_per_trial=0"]), {"CPU": 2.0, "GPU": 1.0})
    assert trial_resources(cfg, {"CPU": 2.0, "GPU": 1.0}) == {"cpu": 2.0, "gpu": 1.0}


# --- rows that start Ray or need a signal: the real CLI in a subprocess ----------------------
SUBPROCESS_ROWS: dict[str, Row] = {
    "cpus-per-trial-unmeetable": Row(_start("tune.cpus_per_trial=64"), ("tune.cpus_per_trial=64", "Ray sees")),
    "gpus-per-trial-unmeetable": Row(_start("tune.gpus_per_trial=2"), ("tune.gpus_per_trial=2", "Ray sees")),
    "device-cuda-without-gpu": Row(_start("train.device=cuda"), ("train.device=cuda", "train.device=auto")),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SUBPROCESS_ROWS))
def test_bad_resources_exit_2_before_the_study_exists(name: str, tmp_path: Path) -> None:
    if name == "device-cuda-without-gpu":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    row = SUBPROCESS_ROWS[name]
    argv = [a.format(store=tmp_path / "store") for a in row.argv.split(" | ")]
    proc = subprocess.run([sys.executable, "-m", "tune_app.run", *argv], cwd=REPO, env=study_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    message = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(message) == 1, proc.stderr[-3000:]
    for part in row.must:
        assert part in message[0]
    assert not (tmp_path / "store").exists(), "nothing may be created for a study that never started"


def _interrupt(args: list[str], ready: Callable[[str], bool], tmp: Path) -> tuple[int, str, str]:
    """Run ``python -m ARGS`` (``failpoint`` pauses it), SIGINT it once ``ready(stdout so far)``."""
    env = {**study_env(), "TUNE_APP_FAILPOINTS": "study_report=120,cleanup=120"}
    out_path, err_path = tmp / "out.txt", tmp / "err.txt"
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env, stdout=out, stderr=err,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while not ready(out_path.read_text()):
                assert proc.poll() is None, f"ended early ({proc.returncode}): {err_path.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "never reached the failpoint"
                time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=180)  # generous: a loaded CI machine
        finally:
            end_group(proc, grace=1)
    return code, out_path.read_text(), err_path.read_text()


@pytest.mark.slow
def test_ctrl_c_in_evaluate_exits_130_and_leaves_no_partial_report(tmp_path: Path) -> None:
    from tests.evaluation import make_study

    study = make_study(tmp_path / "s", scores=[[0.2, 0.5]], num_posts=40)
    out_dir = tmp_path / "manual"
    code, out, err = _interrupt(["tune_app.evaluate", "--study", str(study), "--out", str(out_dir)],
                                lambda _: (out_dir / "evaluation_report.html").is_file(), tmp_path)
    assert code == 130, err[-3000:]
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in err
    assert "interrupted" in err.strip().splitlines()[-1]
    assert not (out_dir / "evaluation_report.json").exists()
    assert not [p for p in out_dir.rglob("*") if ".tmp-" in p.name], "a temp file was left behind"


@pytest.mark.slow
@pytest.mark.parametrize("execute", [False, True], ids=["dry-run", "execute"])
def test_ctrl_c_in_cleanup_exits_130_without_a_traceback(execute: bool, tmp_path: Path) -> None:
    study = _study_with_config(tmp_path / "study", compose([f"tune.storage_path={tmp_path}",
                                                           "tune.name=study"]).to_yaml())
    leftover = study / "trial_a" / f"{TMP_PREFIX}crashed"  # a temp folder an interrupted save left behind
    leftover.mkdir(parents=True)
    args = ["tune_app.cleanup", "--study", str(study), "--tmp-min-age", "0", *(["--execute"] if execute else [])]
    code, out, err = _interrupt(args, lambda text: "reclaimable" in text, tmp_path)
    assert code == 130, err[-3000:]
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted:")
    assert leftover.exists(), "interrupted before deleting: nothing may be gone"


@pytest.mark.parametrize("argv", [["tune.name=my", "study"], ["tune.name=a(b)"]], ids=["spaces", "parens"])
def test_the_quote_hint_is_an_override_that_works(argv: list[str]) -> None:
    """The fix the message suggests (``quote it: "key='value'"``) composes to the value meant."""
    from tune_app.config import ConfigError

    with pytest.raises(ConfigError, match="quote it") as info:
        compose(argv)
    suggested = str(info.value).rsplit("quote it: ", 1)[1].strip('"')
    assert compose([suggested]).tune.name == " ".join(argv).partition("=")[2]


@pytest.mark.parametrize("entry", ["run", "evaluate", "cleanup"])
def test_a_bad_value_holding_a_secret_is_not_echoed(entry: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A wrong-typed value is quoted in the message, with its credentials redacted."""
    secret = "hunter2-s3cret"
    study = tmp_path / "study"
    good = compose([f"tune.storage_path={tmp_path}", "tune.name=study"]).to_yaml()
    _study_with_config(study, good.replace("tracking_uri: null", f"tracking_uri: [https://me:{secret}@mlflow.x]"))
    argv = {"run": [f"resume={study}"], "evaluate": ["--study", str(study)], "cleanup": ["--study", str(study)]}
    assert _call(entry, argv[entry]) == 2
    err = capsys.readouterr().err
    assert "tracking.tracking_uri" in err and "study_config.yaml is corrupt" in err
    assert secret not in err


def test_evaluate_and_cleanup_reach_their_ctrl_c_handler_at_once() -> None:
    """Their modules import no torch at load time (seconds), so a Ctrl-C lands in main's handler."""
    code = ("import sys, tune_app.cleanup, tune_app.evaluate\n"
            "print(sorted(m for m in ('torch', 'transformers', 'ray') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout
