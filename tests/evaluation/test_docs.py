"""The python examples of docs/reports.md run against a real evaluated study."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from tests.evaluation import evaluated_study

DOC = Path(__file__).resolve().parents[2] / "docs" / "reports.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_reports_guide_examples_run(tmp_path_factory: pytest.TempPathFactory,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    study = evaluated_study(tmp_path_factory)
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 5
    monkeypatch.setenv("STUDY", str(study))
    namespace: dict[str, object] = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for i, block in enumerate(blocks):
            exec(compile(block, f"{DOC.name}[python block {i}]", "exec"), namespace)  # noqa: S102
    printed = out.getvalue()
    assert "best trial t0000_00000" in printed and "test macro-F1" in printed
    assert "t0001_00001" in printed  # the per-trial table lists every trial
    assert "checkpoint_000002" in printed
    assert "AP " in printed and "parameter importance needs \u2265 10 scored trials; this study has 2" in printed
