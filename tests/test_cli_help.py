"""Did you mean: a misspelt key, section or group option gets the closest known one."""

from __future__ import annotations

import pytest

from tune_app import run
from tune_app.config import ConfigError, compose


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


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
