"""Secret shapes of any realistic length, secret environment values, no false positives,
and each channel's choke point (streams, exceptions, config files, trial files, MLflow)."""

from __future__ import annotations

import io
import json
import logging
import pickle
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tune_app import config as config_mod
from tune_app.config import AppConfig, ConfigError
from tune_app.tracking.sanitize import (
    REDACTED,
    SanitizedError,
    SanitizingStream,
    install_std_streams,
    sanitize,
    sanitize_value,
    sanitized_exception,
    secret_env_name,
)

# (secret as written, the part that must disappear): short and long forms of each kind.
SECRETS = [
    ("hf_SECRETabc123", "SECRETabc123"),
    ("hf_" + "Ab3" * 12, "Ab3" * 12),
    ("hf_abc123", "abc123"),
    ("sk-SECRET999", "SECRET999"),
    ("sk-proj-Xy7" + "q" * 40, "Xy7" + "q" * 40),
    ("sk-" + "A1b2" * 12, "A1b2" * 12),
    ("ghp_abc123XYZ", "abc123XYZ"),
    ("gho_" + "Z9y" * 12, "Z9y" * 12),
    ("github_pat_11ABCdef_" + "x9" * 30, "11ABCdef_" + "x9" * 30),
    ("AKIAIOSFODNN7EXAMPLE", "IOSFODNN7EXAMPLE"),
    ("aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCY"),
    ("Authorization: Bearer abc123", "abc123"),
    ("Bearer eyJ" + "a" * 20 + "." + "b" * 20 + "." + "c" * 20, "a" * 20),
    ("postgresql://bob:hunter2@db.example.org/x", "hunter2"),
    ("https://user:Pa55word!long-enough-to-matter@host", "Pa55word!long-enough-to-matter"),
    ("MY_HF_TOKEN=xyz987", "xyz987"),
    ("db_password: hunter2", "hunter2"),
    ("api_key=plainvalue", "plainvalue"),
    ("client_secret = 's3cr3t value'", "s3cr3t value"),
]
CONTEXTS = ["{}", "path /data/{}/posts.csv", "glued:{}.csv", "(x={} )", "line one\n{}\nline three"]


@pytest.mark.parametrize("secret,body", SECRETS, ids=[s[:18] for s, _ in SECRETS])
@pytest.mark.parametrize("context", CONTEXTS)
def test_secret_kinds_are_redacted_in_any_context(secret: str, body: str, context: str) -> None:
    out = sanitize(context.format(secret))
    assert body not in out, out
    assert REDACTED in out


@pytest.mark.parametrize("secret,body", SECRETS, ids=[s[:18] for s, _ in SECRETS])
def test_secret_kinds_are_redacted_in_json(secret: str, body: str) -> None:
    text = json.dumps({"note": secret, "nested": [{"v": secret}]})
    out = sanitize(text)
    assert body not in out
    json.loads(out)  # still JSON


@pytest.mark.parametrize("text,body", [
    ('{"password": "two words"}', "two words"),
    ('{"api_key": 12345678}', "12345678"),
    ("{'db_password': 'hunter2'}", "hunter2"),
    ('"HF_TOKEN": "abcdefgh"', "abcdefgh"),
])
def test_json_and_repr_pairs_with_secret_keys(text: str, body: str) -> None:
    assert body not in sanitize(text)


def test_mapping_values_under_secret_keys_are_redacted_whole() -> None:
    out = sanitize_value({"api_key": 123456, "db": {"password": "plain words"}, "tokenizer": "bert-base",
                          "MY_HF_TOKEN": "anything", "lr": 0.1, "flags": [True, None]})
    assert out == {"api_key": REDACTED, "db": {"password": REDACTED}, "tokenizer": "bert-base",
                   "MY_HF_TOKEN": REDACTED, "lr": 0.1, "flags": [True, None]}


@pytest.mark.parametrize("name,secret", [
    ("HF_TOKEN", True), ("HUGGING_FACE_HUB_TOKEN", True), ("OPENAI_API_KEY", True), ("WANDB_API_KEY", True),
    ("AWS_SECRET_ACCESS_KEY", True), ("AWS_ACCESS_KEY_ID", True), ("MY_SERVICE_PASSWORD", True),
    ("CLIENT_SECRETS", True), ("GITHUB_TOKEN", True), ("DB_PASSWORD_ADMIN", True),
    ("TOKENIZERS_PARALLELISM", False), ("HF_TOKEN_PATH", False), ("PATH", False), ("HOME", False),
    ("SSH_AUTH_SOCK", False), ("KEYBOARD", False), ("TUNE_APP_FAILPOINTS", False), ("PYTHONHASHSEED", False),
])
def test_secret_environment_names(name: str, secret: bool) -> None:
    assert secret_env_name(name) is secret


def test_secret_environment_values_are_redacted_while_set(monkeypatch: pytest.MonkeyPatch) -> None:
    line = "connecting with plainword42 as user (value glued:xplainword42y)"
    assert sanitize(line) == line
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "plainword42")
    assert "plainword42" not in sanitize(line)
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "otherword77")  # a new value: the cache follows
    assert "otherword77" not in sanitize("x otherword77") and "plainword42" in sanitize(line)
    monkeypatch.delenv("MY_SERVICE_PASSWORD")
    assert sanitize(line) == line


@pytest.mark.parametrize("name,value", [("SOME_TOKEN_MODE", "enabled"), ("MAX_TOKENS", "100000"),
                                        ("HF_TOKEN", "abc"), ("HF_TOKEN_PATH", "/root/.cache/hf/token")])
def test_environment_values_that_say_nothing_are_kept(monkeypatch: pytest.MonkeyPatch, name: str,
                                                      value: str) -> None:
    monkeypatch.setenv(name, value)
    assert sanitize(f"mode {value} here") == f"mode {value} here"


# --- no false positives -------------------------------------------------------------------
ORDINARY_LINES = [
    "epoch 3/4 val_macro_f1=0.871 lr=3e-05 tokenizer=bert-base max_span_tokens=512 trial 7f3a2_00017",
    "usage: python -m tune_app.run [key=value ...]",
    "Config groups (configs/): model, data, retention, tune, train; keys: searchspace, seed.",
    "train_trial_8bd1c2f3_00001_1_lr=0.0012,train_batch_size=16_2026-12-02_04-05-33",
    "study /tmp/experiments/redsm5_study: 4 trials x 4 epochs, model=tiny, data=synthetic (abc123), splits {}",
    "loading hf_datasets from ~/.cache/hf_cache (hub_id irlab-udc/redsm5, revision main)",
    "risk-adjusted task-level disk-usage; bypass=3 compass: north",
    "checkpoint_000003 sha256 9f86d081884c7d659a2feaf0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "Trial 2/4 (50.0%) | best val_macro_f1 0.4210 | ETA 1m 20s",
    "tokens: 512, num_tokens=128, token_budget=4096",
]


@pytest.mark.parametrize("line", ORDINARY_LINES)
def test_ordinary_log_lines_are_unchanged(line: str) -> None:
    assert sanitize(line) == line


def test_a_study_config_and_a_result_are_unchanged(tmp_path: Path) -> None:
    cfg = AppConfig()
    cfg.tune.storage_path = str(tmp_path / "experiments")
    cfg.tracking.tracking_uri = f"sqlite:///{tmp_path}/experiments/mlflow.db"
    cfg.model.revision = "0123456789abcdef0123456789abcdef01234567"
    doc = cfg.to_dict()
    assert sanitize_value(doc) == doc
    result = {"epoch": 2, "train_loss": 0.41, "val_macro_f1": 0.62, "val_evidence_f1": 0.3, "trial_id": "58091869",
              "date": "2026-12-02_04-10-32", "hostname": "worker-1", "node_ip": "10.0.0.7", "pid": 3141,
              "checkpoint_dir_name": "checkpoint_000001", "config": {"train.lr": 0.0012, "model.pooling": "mean",
                                                                     "model.criteria_head": "mlp"}}
    assert sanitize_value(result) == result


# --- streams ------------------------------------------------------------------------------
def test_stream_wrapper_redacts_a_secret_split_over_writes() -> None:
    raw = io.StringIO()
    stream = SanitizingStream(raw)  # type: ignore[arg-type]
    stream.write("token hf_SECR")
    stream.write("ETabc123 end\nprogress 50%\r")
    assert raw.getvalue() == "token hf_*** end\nprogress 50%\r"
    stream.write("partial sk-SECRET999")
    assert "sk-" not in raw.getvalue()[-30:]  # waits for the line's end ...
    stream.flush()  # ... or a flush
    assert raw.getvalue().endswith("partial sk-***")
    assert stream.getvalue() == raw.getvalue()  # everything else is the wrapped stream's


def test_install_std_streams_wraps_once_and_moves_logging_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = io.StringIO()
    monkeypatch.setattr(sys, "stderr", raw)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    handler = logging.StreamHandler(raw)
    log = logging.getLogger("tune_app.test_secrets")
    log.addHandler(handler)
    try:
        install_std_streams()
        install_std_streams()
        assert isinstance(sys.stderr, SanitizingStream) and sys.stderr.wrapped is raw
        assert handler.stream is sys.stderr
        log.warning("ghp_abc123XYZ leaked?")
        print("password=hunter2", file=sys.stderr)
        sys.stderr.flush()
    finally:
        log.removeHandler(handler)
    assert "abc123XYZ" not in raw.getvalue() and "hunter2" not in raw.getvalue()
    assert "leaked?" in raw.getvalue()


# --- exceptions ---------------------------------------------------------------------------
def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001
        return caught


def test_an_exception_without_secrets_is_left_alone() -> None:
    assert sanitized_exception(_raised(ValueError("plain message"))) is None


def test_a_known_error_keeps_its_class_and_the_driver_still_finds_it() -> None:
    from tune_app.run import error_message

    try:
        try:
            raise OSError("hub said: token hf_SECRETabc123 refused")
        except OSError as inner:
            raise ConfigError("data.hub_id=x: access denied for hf_SECRETabc123; fix: set HF_TOKEN") from inner
    except ConfigError as exc:
        clean = sanitized_exception(exc)
    assert isinstance(clean, ConfigError)
    copy = pickle.loads(pickle.dumps(clean))  # Tune's error.pkl
    text = "".join(traceback.format_exception(copy))
    formatted = "".join(traceback.format_exception(clean))
    for out in (text, formatted, str(clean)):
        assert "SECRETabc123" not in out
    assert "Original traceback (sanitised)" in formatted and "OSError: hub said: token hf_***" in formatted
    assert error_message("Failure # 1\n" + formatted).startswith("ConfigError: data.hub_id=x: access denied")


def test_an_exception_that_cannot_be_rebuilt_becomes_a_sanitized_error() -> None:
    exc = _raised(UnicodeDecodeError("utf-8", b"sk-SECRET999", 0, 1, "bad byte in sk-SECRET999"))
    clean = sanitized_exception(exc)
    assert isinstance(clean, SanitizedError)
    assert str(clean).startswith("UnicodeDecodeError: ") and "SECRET999" not in str(clean)
    pickle.loads(pickle.dumps(clean))


# --- config files -------------------------------------------------------------------------
@pytest.fixture
def forget_redactions(monkeypatch: pytest.MonkeyPatch) -> dict[Any, Any]:
    table: dict[Any, Any] = {}
    monkeypatch.setattr(config_mod, "_REDACTIONS", table)
    return table


def test_config_yaml_is_redacted_and_read_back_by_this_process_only(tmp_path: Path,
                                                                    forget_redactions: dict[Any, Any]) -> None:
    import yaml

    data = tmp_path / "hf_SECRETabc123"
    data.mkdir()
    cfg = AppConfig()
    cfg.tune.storage_path = str(tmp_path / "exp")
    cfg.data.name = cfg.data.source = "local"
    cfg.data.path = str(data)
    cfg.tracking.experiment_name = "exp-sk-SECRET999"
    text = cfg.to_yaml()
    assert "SECRETabc123" not in text and "SECRET999" not in text
    loaded = config_mod.from_dict(yaml.safe_load(text))  # the end-of-study evaluation, same process
    assert loaded.data.path == str(data) and loaded.tracking.experiment_name == "exp-sk-SECRET999"
    forget_redactions.clear()  # another process (resume=)
    with pytest.raises(ConfigError) as err:
        config_mod.from_dict(yaml.safe_load(text))
    message = str(err.value)
    assert message.startswith("data.path=") and "was redacted" in message and "SECRET" not in message


def test_a_redacted_tracking_uri_names_the_environment_variables(tmp_path: Path,
                                                                 forget_redactions: dict[Any, Any]) -> None:
    cfg = AppConfig()
    cfg.tune.storage_path = str(tmp_path)
    cfg.tracking.tracking_uri = "https://me:Pa55w0rd99@mlflow.example.org"
    doc = cfg.to_dict()
    doc["tracking"]["tracking_uri"] = sanitize(doc["tracking"]["tracking_uri"])
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_PASSWORD") as err:
        config_mod.from_dict(doc)
    assert "Pa55w0rd99" not in str(err.value)


@pytest.mark.parametrize("key,value", [("tune.name", "study-sk-SECRET999"),
                                       ("tune.storage_path", "/tmp/hf_SECRETabc123/experiments")])
def test_a_secret_in_the_study_folder_is_refused(key: str, value: str) -> None:
    section, name = key.split(".")
    doc = AppConfig().to_dict()
    doc[section][name] = value
    with pytest.raises(ConfigError, match=rf"^{key}=") as err:
        config_mod.from_dict(doc)
    assert "SECRET" not in str(err.value) and "looks like a secret" in str(err.value)


# --- trial files and MLflow -------------------------------------------------------------------
def test_trial_files_are_written_sanitised(tmp_path: Path) -> None:
    from tune_app.tracking.trial_files import StudyTrialFilesCallback

    trial = SimpleNamespace(storage=SimpleNamespace(trial_fs_path=str(tmp_path)),
                            config={"train.lr": 0.1, "note": "hf_SECRETabc123"})
    cb = StudyTrialFilesCallback()
    cb.log_trial_start(trial)
    cb.log_trial_result(1, trial, {"epoch": 1, "val_macro_f1": 0.5, "msg": "password=hunter2",
                                   "config": trial.config})
    for path in tmp_path.iterdir():
        data = path.read_bytes()
        assert b"SECRETabc123" not in data and b"hunter2" not in data, path.name
    assert json.loads((tmp_path / "params.json").read_text())["train.lr"] == 0.1


def test_mlflow_writes_and_the_pickled_callback_are_sanitised(tmp_path: Path) -> None:
    from tests.tracking.test_buffer import FakeClient
    from tune_app.tracking.buffer import BufferedMlflowWriter, MetricBuffer, find_or_create_run
    from tune_app.tracking.mlflow_callback import ResumableMLflowLoggerCallback

    client = FakeClient()
    created: list[tuple[str, dict[str, str], str | None]] = []
    create = client.create_run
    client.create_run = lambda exp_id, tags, run_name: (created.append((exp_id, tags, run_name)),  # type: ignore[method-assign]
                                                        create(exp_id, tags, run_name))[1]
    names: list[str] = []
    get = client.get_experiment_by_name
    client.get_experiment_by_name = lambda name: (names.append(name), get(name))[1]  # type: ignore[method-assign]
    find_or_create_run(client, "exp-sk-SECRET999", {"tune_app.trial_id": "t1"},
                       {"tune_app.dataset": "ds-hf_SECRETabc123"}, "run-ghp_abc123XYZ")
    assert "SECRET" not in repr((names, created)) and "abc123XYZ" not in repr(created)

    buffer = MetricBuffer(tmp_path / "buf.jsonl")
    writer = BufferedMlflowWriter(buffer, lambda: client, experiment_name="exp-sk-SECRET999", backoff_initial_s=3600)
    queued: list[Any] = []
    real = writer._queue  # what would reach the writer thread is captured; the thread waits on the real queue
    writer._queue = SimpleNamespace(put=queued.append, get=real.get)  # type: ignore[assignment]
    try:
        writer.log_params("r", {"note": "hf_SECRETabc123"})
        writer.set_tags("r", {"t": "password=hunter2"})
        writer.create_run("pending:x", {"k": "v"}, {"t": "sk-SECRET999"}, "name-sk-SECRET999", "e-sk-SECRET999")
        assert "SECRET" not in repr(queued) + writer.experiment_name and "hunter2" not in repr(queued)
    finally:
        writer._queue = real
        writer.close(1)

    cb = ResumableMLflowLoggerCallback(tracking_uri="https://me:Pa55w0rd99@mlflow.example.org",
                                       experiment_name="exp-sk-SECRET999", study_name="s",
                                       extra_tags={"tune_app.dataset": "ds-hf_SECRETabc123"})
    pickled = pickle.dumps(cb)  # what tuner.pkl holds
    assert b"SECRET" not in pickled and b"Pa55w0rd99" not in pickled
    assert cb.tracking_uri.endswith("Pa55w0rd99@mlflow.example.org")  # the live callback still connects
