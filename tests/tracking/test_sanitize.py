"""Secrets inside random text never survive ``sanitize`` (Hypothesis)."""

from __future__ import annotations

import logging

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tune_app.tracking.sanitize import (
    SanitizingFilter,
    sanitize,
    sanitize_exception,
    sanitize_mapping,
)

ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
# Ordinary text around the secret: words, punctuation, newlines.
text = st.text(alphabet=ALNUM + " .,:;!?()-_/\n", max_size=80)
token_body = st.text(alphabet=ALNUM, min_size=34, max_size=40)
password = st.text(alphabet=ALNUM + "!#$%*+-.^_~", min_size=8, max_size=30)
SETTINGS = settings(max_examples=150, deadline=None)


def embed(prefix: str, secret: str, suffix: str) -> str:
    return f"{prefix} {secret} {suffix}"


@SETTINGS
@given(text, token_body, text)
def test_hugging_face_tokens_are_redacted(prefix: str, body: str, suffix: str) -> None:
    assume(body not in prefix + suffix)
    out = sanitize(embed(prefix, f"hf_{body}", suffix))
    assert body not in out


@SETTINGS
@given(text, st.sampled_from(["sk-", "sk-proj-", "ghp_", "github_pat_", "AIza", "xoxb-"]), token_body, text)
def test_api_keys_are_redacted(prefix: str, kind: str, body: str, suffix: str) -> None:
    assume(body not in prefix + suffix)
    assert body not in sanitize(embed(prefix, kind + body, suffix))


@SETTINGS
@given(text, st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", min_size=16, max_size=16), text)
def test_aws_access_keys_are_redacted(prefix: str, body: str, suffix: str) -> None:
    assume("AKIA" + body not in prefix + suffix)
    assert "AKIA" + body not in sanitize(embed(prefix, "AKIA" + body, suffix))


@SETTINGS
@given(text, st.sampled_from(["Bearer", "bearer", "Authorization: Bearer"]),
       st.text(alphabet=ALNUM + "._~+/=-", min_size=12, max_size=60), text)
def test_bearer_tokens_are_redacted(prefix: str, scheme: str, token: str, suffix: str) -> None:
    assume(token not in prefix + suffix)
    assert token not in sanitize(embed(prefix, f"{scheme} {token}", suffix))


@SETTINGS
@given(text, st.sampled_from(["https", "http", "postgresql", "mysql+pymysql", "redis"]),
       st.text(alphabet=ALNUM, min_size=1, max_size=12), password, text)
def test_passwords_in_urls_are_redacted(prefix: str, scheme: str, user: str, pw: str, suffix: str) -> None:
    assume(pw not in prefix + suffix + user + scheme)
    out = sanitize(embed(prefix, f"{scheme}://{user}:{pw}@db.example.org:5432/x", suffix))
    assert pw not in out and "db.example.org" in out


@SETTINGS
@given(text, st.sampled_from(["password", "PASSWORD", "passwd", "pwd", "secret", "api_key", "apikey",
                              "token", "access_token", "client_secret", "HF_TOKEN", "auth"]),
       st.sampled_from(["=", ": ", " = ", '": "', "='"]), password, text)
def test_key_value_secrets_are_redacted(prefix: str, key: str, sep: str, value: str, suffix: str) -> None:
    assume(value not in prefix + suffix + key)
    assert value not in sanitize(embed(prefix, f"{key}{sep}{value}", suffix))


@SETTINGS
@given(text, st.text(alphabet=ALNUM + "._+-", min_size=1, max_size=20),
       st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=15),
       st.sampled_from(["com", "org", "de", "co.uk", "io"]), text)
def test_email_addresses_are_redacted(prefix: str, local: str, domain: str, tld: str, suffix: str) -> None:
    address = f"{local}@{domain}.{tld}"
    assume(f"@{domain}.{tld}" not in prefix + suffix)
    out = sanitize(embed(prefix, address, suffix))
    assert address not in out and f"@{domain}.{tld}" not in out


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["hf", "url", "kv", "mail"]), token_body), min_size=1, max_size=4),
       text)
def test_several_secrets_in_one_text(secrets: list[tuple[str, str]], filler: str) -> None:
    assume(all(body not in filler for _, body in secrets))
    forms = {"hf": "hf_{}", "url": "https://me:{}@host/x", "kv": "password={}", "mail": "{}@mail.com"}
    rendered = [forms[kind].format(body) for kind, body in secrets]
    out = sanitize(filler.join(f" {r} " for r in rendered))
    assert all(body not in out for _, body in secrets)


def test_ordinary_text_is_kept() -> None:
    line = "epoch 3/4 val_macro_f1=0.871 lr=3e-05 tokenizer=bert-base max_tokens=512 trial 7f3a2_00017"
    assert sanitize(line) == line


def test_exception_messages_and_tracebacks_are_sanitized() -> None:
    try:
        raise RuntimeError("login failed for https://bob:hunter2secret@hub.example.org token=hf_" + "a" * 34)
    except RuntimeError as exc:
        short, full = sanitize_exception(exc), sanitize_exception(exc, with_traceback=True)
    for out in (short, full):
        assert "hunter2secret" not in out and "a" * 34 not in out
    assert short.startswith("RuntimeError: login failed") and "Traceback" in full


def test_mlflow_params_and_tags_are_sanitized() -> None:
    out = sanitize_mapping({"data.url": "https://u:pw123456@x.org/d", "owner": "alice@example.com", "lr": 0.1})
    assert out == {"data.url": "https://u:***@x.org/d", "owner": "<email>", "lr": "0.1"}


def test_logging_filter_redacts_message_args_exception_and_extra() -> None:
    try:
        raise ValueError("api_key=sk-" + "b" * 30)
    except ValueError:
        record = logging.LogRecord("tune_app.x", logging.ERROR, __file__, 1, "user %s pw %s", ("a@b.io", "x"),
                                   exc_info=__import__("sys").exc_info())
    record.__dict__["url"] = "https://u:supersecret1@h/x"
    assert SanitizingFilter().filter(record)
    assert "a@b.io" not in record.getMessage()
    assert record.exc_text is not None and "b" * 30 not in record.exc_text
    assert "supersecret1" not in record.__dict__["url"]
