"""JSON Schema contracts of what the evaluation writes and reads (``tune_app/contracts/``).

``trial_report`` (``<trial>/evaluation_report.json``), ``study_report``
(``<study>/evaluation_report.json``) and ``checkpoint_metadata`` (a checkpoint's
``manifest.json`` and ``state.json``). Every report is validated before it is written.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

CONTRACTS_DIR = Path(__file__).resolve().parent.parent / "contracts"
SCHEMAS = ("trial_report", "study_report", "checkpoint_metadata")


class ContractError(ValueError):
    """A document does not satisfy its schema; the message lists each violation and where."""


@cache
def validator(name: str) -> Draft202012Validator:
    """The validator of schema ``name`` (one of :data:`SCHEMAS`)."""
    if name not in SCHEMAS:
        raise ValueError(f"unknown contract {name!r}; known: {', '.join(SCHEMAS)}")
    schema = json.loads((CONTRACTS_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


def errors(doc: Any, name: str) -> list[str]:
    """Every violation of schema ``name`` by ``doc``, as ``path: message`` lines (empty: valid)."""
    found = sorted(validator(name).iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in found]


def validate(doc: Any, name: str, *, where: str = "document") -> None:
    """Raise :class:`ContractError` unless ``doc`` satisfies schema ``name``."""
    problems = errors(doc, name)
    if problems:
        shown = "\n  ".join(problems[:20])
        raise ContractError(f"{where} violates the {name} contract ({len(problems)} problem(s)):\n  {shown}")


def validate_checkpoint_metadata(checkpoint: Path) -> None:
    """Validate a checkpoint's ``manifest.json`` and ``state.json`` against their contract."""
    for fname in ("manifest.json", "state.json"):
        path = Path(checkpoint) / fname
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ContractError(f"{path} is unreadable: {exc}") from exc
        validate(doc, "checkpoint_metadata", where=str(path))
