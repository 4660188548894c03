"""``python -m tune_app.run --help`` and ``--cfg job``: explain the configuration, run nothing.

The help is generated from ``configs/`` (groups and their option files), ``searchspaces/``
and the composed default config (every key and its default), so it cannot go stale.
Neither command starts Ray or imports torch.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

from tune_app.config import (
    CONFIG_DIR,
    AppConfig,
    ConfigError,
    apply_resume_overrides,
    check_resume_overrides,
    compose,
    config_groups,
    default_choices,
    group_options,
    load_study_config,
)

_WIDTH = 100

USAGE = """\
usage: python -m tune_app.run [key=value ...]              start a study
       python -m tune_app.run resume=<study dir>           resume an interrupted study (no other overrides)
       python -m tune_app.run resume=s3://<bucket>/<prefix>/<name>   the same, for a study in an object store
       python -m tune_app.run --cfg job [key=value ...]    print the composed config, run nothing
       python -m tune_app.run --help
Add -v (--verbose) to a run to print everything (Tune's tables, Ray workers' output, INFO logs);
by default the console shows one line per trial and a summary (the study's logs keep the rest).

Overrides are Hydra syntax: group=option picks a file of a config group, key=value sets one key.
  python -m tune_app.run tune.num_samples=3 tune.max_epochs=2 model=tiny
  python -m tune_app.run model=minilm retention=aggressive tune.num_samples=50
  python -m tune_app.run resume=experiments/redsm5_study
Every value is validated before Ray starts; a bad one exits with code 2 and names the fix.
Exit codes: 0 study complete, 1 trials failed, 2 bad input, 130 interrupted (resumable)."""


def _fmt(value: Any) -> str:
    """A value as it would be written in an override (``null``, ``true``, ``[0.7,0.15]``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    return str(value)


def _options_line(options: list[str], default: str | None) -> str:
    return ", ".join(f"{o}*" if o == default else o for o in options)


def _wrap(items: list[str], indent: str = "    ") -> str:
    return textwrap.fill("  ".join(items), width=_WIDTH, initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False, break_long_words=False)


def help_text(config_dir: Path = CONFIG_DIR) -> str:
    """The full ``--help``: usage, every config group with its options (default marked) and
    every key of every section with its default value."""
    from searchspaces import available_spaces

    defaults = compose([], config_dir)
    choices = default_choices(config_dir)
    groups = config_groups(config_dir)
    lines = [USAGE, "", "Config groups (group=option; the options are the files in configs/<group>/; * = default):"]
    width = max(len(g) for g in [*groups, "searchspace"]) + 2
    for group in groups:
        lines.append(f"  {group:<{width}}{_options_line(group_options(group, config_dir), choices.get(group))}")
    lines.append(f"  {'searchspace':<{width}}{_options_line(available_spaces(), defaults.searchspace)}"
                 "   (modules in searchspaces/)")
    lines += ["", "Keys and their defaults (as composed from the defaults above; set any with key=value):"]
    top: list[str] = []
    for spec in dataclasses.fields(AppConfig):
        value = getattr(defaults, spec.name)
        if not dataclasses.is_dataclass(value):
            top.append(spec.name)
            continue
        origin = f"group {spec.name}, option {choices[spec.name]}" if spec.name in choices else "configs/config.yaml"
        doc = (type(value).__doc__ or "").strip().splitlines()[0].replace("``", "")
        lines.append(f"  {spec.name}: {doc} ({origin})")
        lines.append(_wrap([f"{spec.name}.{f.name}={_fmt(getattr(value, f.name))}" for f in dataclasses.fields(value)]))
    lines.append("  top level:")
    lines.append(_wrap([f"{name}={_fmt(getattr(defaults, name))}" for name in top]))
    lines += ["    (resume=<study dir> resumes the study in that folder with its saved config; "
              "no other overrides)",
              "", "Show the composed config of some overrides: python -m tune_app.run --cfg job model=minilm"]
    return "\n".join(lines)


def parse_cfg(args: list[str]) -> tuple[str, list[str]]:
    """``(what, overrides)`` from ``--cfg job [overrides]`` (also ``--cfg=job``, ``-c job``)."""
    what: str | None = None
    rest: list[str] = []
    it = iter(args)
    for arg in it:
        if arg in {"--cfg", "-c"}:
            what = next(it, "")
        elif arg.startswith("--cfg="):
            what = arg.partition("=")[2]
        else:
            rest.append(arg)
    if what != "job":
        shown = what or "(nothing)"
        raise ConfigError(f"--cfg {shown}: only `--cfg job` is supported (this app composes its config "
                          "without Hydra's runtime config); e.g. python -m tune_app.run --cfg job model=minilm")
    return what, rest


def wants_cfg(args: list[str]) -> bool:
    """Whether the command line asks for ``--cfg``."""
    return any(a in {"--cfg", "-c"} or a.startswith("--cfg=") for a in args)


def cfg_text(args: list[str]) -> str:
    """The YAML of the config ``--cfg job [overrides]`` composes and validates (secrets redacted);
    with ``resume=<study dir>``, the study's saved config. Raises ``ConfigError`` on bad input."""
    _, overrides = parse_cfg(args)
    resume = [o for o in overrides if o.startswith("resume=") and o.partition("=")[2] not in {"", "null", "None"}]
    if resume:
        rest = [o for o in overrides if o not in resume]
        check_resume_overrides(rest)
        cfg: AppConfig = apply_resume_overrides(
            load_study_config(Path(resume[0].partition("=")[2]).expanduser().resolve()), rest)
    else:
        cfg = compose(overrides)
    return cfg.to_yaml().rstrip("\n")
