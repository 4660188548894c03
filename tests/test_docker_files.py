"""The container files, checked without a Docker engine: Dockerfile instructions,
compose services, ``.dockerignore``, the entrypoint and the Makefile targets."""

from __future__ import annotations

import fnmatch
import importlib
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = REPO / "docker" / "docker-compose.yml"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"


@dataclass(frozen=True)
class Instruction:
    stage: str
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped, tagged by stage."""
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, "Dockerfile ends inside a continued line"
    out, stage = [], "<global>"
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            found = re.search(r"\bAS\s+(\S+)", args, re.I)
            assert found, f"unnamed stage: FROM {args}"
            stage = found.group(1)
        out.append(Instruction(stage, keyword, args.strip()))
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _of(ins: list[Instruction], keyword: str, stage: str | None = None) -> list[Instruction]:
    return [i for i in ins if i.keyword == keyword and (stage is None or i.stage == stage)]


def _arg_defaults(ins: list[Instruction]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i in _of(ins, "ARG"):
        name, sep, value = i.args.partition("=")
        if sep:
            out.setdefault(name, value)
    return out


def _final_stage(ins: list[Instruction]) -> str:
    return _of(ins, "FROM")[-1].stage


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


# --- Dockerfile ---------------------------------------------------------------------
def test_parser_joins_continuations_and_names_stages() -> None:
    ins = parse_dockerfile("# c\nFROM a AS one\nRUN x \\\n  # note\n  && y\nFROM one AS two\nUSER 7\n")
    assert [(i.stage, i.keyword) for i in ins] == [("one", "FROM"), ("one", "RUN"), ("two", "FROM"), ("two", "USER")]
    assert ins[1].args == "x  && y"
    with pytest.raises(AssertionError):
        parse_dockerfile("FROM a\n")


def test_multi_stage_with_export_builder_runtime(dockerfile: list[Instruction]) -> None:
    stages = [i.stage for i in _of(dockerfile, "FROM")]
    assert stages == ["export", "builder", "runtime"]
    copied_from = {m.group(1) for i in _of(dockerfile, "COPY") if (m := re.search(r"--from=(\S+)", i.args))}
    assert copied_from == {"export", "builder"}


def test_base_image_python_matches_requires_python(dockerfile: list[Instruction]) -> None:
    defaults = _arg_defaults(dockerfile)
    requires = SpecifierSet(_pyproject()["project"]["requires-python"])
    for frm in _of(dockerfile, "FROM"):
        image = frm.args.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image)
        found = re.fullmatch(r"python:(\d+)\.(\d+)(?:\.\d+)?(-[\w.-]+)?", image)
        assert found, f"stage {frm.stage} is not built on an official python:X.Y image: {image}"
        version = f"{found.group(1)}.{found.group(2)}"
        assert requires.contains(f"{version}.0"), f"{image}: Python {version} outside requires-python {requires}"


def test_dependencies_come_from_poetry_lock_like_install_sh(dockerfile: list[Instruction]) -> None:
    install_sh = (REPO / "scripts" / "install.sh").read_text()
    export_runs = " ".join(i.args for i in _of(dockerfile, "RUN", "export"))
    assert "poetry check --lock" in export_runs and "poetry export -f requirements.txt" in export_runs
    assert any("poetry.lock" in i.args.split() for i in _of(dockerfile, "COPY", "export"))
    assert (REPO / "poetry.lock").is_file(), "poetry.lock missing: the image cannot be built"
    # Same Poetry and the same torch-first split as scripts/install.sh.
    poetry_pin = re.search(r'"poetry==([\d.]+)"', install_sh)
    assert poetry_pin and _arg_defaults(dockerfile)["POETRY_VERSION"] == poetry_pin.group(1)
    cuda_filter = "grep -vE '^(nvidia-|cuda-|triton==|torch==)'"
    assert cuda_filter in install_sh and cuda_filter in export_runs
    builder_runs = " ".join(i.args for i in _of(dockerfile, "RUN", "builder"))
    assert builder_runs.index("torch-pin.txt") < builder_runs.index("-r /tmp/requirements.txt")


def test_cpu_by_default_cuda_by_build_arg(dockerfile: list[Instruction]) -> None:
    defaults = _arg_defaults(dockerfile)
    assert defaults["TORCH_VARIANT"] == "cpu"
    assert defaults["TORCH_CPU_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    torch_run = next(i.args for i in _of(dockerfile, "RUN", "builder") if "TORCH_VARIANT" in i.args)
    cpu = re.search(r"cpu\)(.*?);;", torch_run)
    cuda = re.search(r"cuda\)(.*?);;", torch_run)
    assert cpu and "--index-url \"$TORCH_CPU_INDEX_URL\"" in cpu.group(1)
    assert cuda and "torch-pin.txt" in cuda.group(1) and "--index-url" not in cuda.group(1)


def _dockerignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.replace("**/", "")) for p in prefixes):
            ignored = not negate
    return ignored


def test_every_copied_path_exists_and_is_in_the_build_context(dockerfile: list[Instruction]) -> None:
    patterns = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    sources = []
    for i in _of(dockerfile, "COPY"):
        words = [w for w in shlex.split(i.args) if not w.startswith("--")]
        if "--from=" not in i.args:
            sources += words[:-1]
    assert {"pyproject.toml", "poetry.lock", "tune_app/", "configs/", "docker/entrypoint.sh"} <= set(sources)
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: no such path in the repository"
        assert not _dockerignored(src.rstrip("/"), patterns), f"COPY {src}: excluded by .dockerignore"


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    for heavy in (".git", ".venv", ".venv-tools", "experiments", "tune_app/__pycache__"):
        assert _dockerignored(heavy, patterns), f"{heavy} would be sent to the Docker daemon"


def test_runtime_runs_tune_app_run_as_non_root(dockerfile: list[Instruction]) -> None:
    final = _final_stage(dockerfile)
    users = _of(dockerfile, "USER", final)
    assert users and users[-1].args not in {"root", "0", "0:0"}
    assert any("useradd" in i.args for i in _of(dockerfile, "RUN", final))
    entry = yaml.safe_load(_of(dockerfile, "ENTRYPOINT", final)[-1].args)
    assert entry[-3:] == ["python", "-m", "tune_app.run"]
    assert yaml.safe_load(_of(dockerfile, "CMD", final)[-1].args) == []
    mod = importlib.import_module(entry[-1])
    assert callable(getattr(mod, "main", None))
    copied = {Path(shlex.split(i.args)[-1]).name: shlex.split(i.args)[-2] for i in _of(dockerfile, "COPY", final)}
    assert copied.get(entry[entry.index("python") - 1]) == "docker/entrypoint.sh"


def test_entrypoint_script_is_valid_and_execs_the_command() -> None:
    assert ENTRYPOINT.stat().st_mode & 0o111, "docker/entrypoint.sh must be executable"
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True)
    lines = [ln.strip() for ln in ENTRYPOINT.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[-1] == 'exec "$@"'
    out = subprocess.run(["sh", str(ENTRYPOINT), "echo", "passed", "model=minilm"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "HF_HOME": "/nonexistent"})
    assert out.returncode == 0 and out.stdout.strip() == "passed model=minilm"


def test_runtime_env_ports_and_nltk(dockerfile: list[Instruction], compose: dict[str, Any]) -> None:
    final = _final_stage(dockerfile)
    env = " ".join(i.args for i in _of(dockerfile, "ENV", final))
    hf_home = re.search(r"HF_HOME=(\S+)", env)
    assert hf_home
    mounts = {v["target"] for v in compose["services"]["trainer"]["volumes"]}
    assert hf_home.group(1) in mounts
    assert "CUBLAS_WORKSPACE_CONFIG=:4096:8" in env
    exposed = {p for i in _of(dockerfile, "EXPOSE", final) for p in i.args.split()}
    assert {"8265", "5000"} <= exposed
    nltk = [i.args for i in _of(dockerfile, "RUN") if "install_nltk_data.sh" in i.args]
    assert nltk and (REPO / "scripts" / "install_nltk_data.sh").is_file()


# --- compose ------------------------------------------------------------------------
def _container_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in service.get("ports", [])}


def test_compose_builds_this_dockerfile_from_the_repo_root(compose: dict[str, Any]) -> None:
    for name in ("trainer", "trainer-cpu"):
        build = compose["services"][name]["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == REPO and (context / build["dockerfile"]).resolve() == DOCKERFILE
    assert compose["services"]["trainer"]["build"]["args"]["TORCH_VARIANT"] == "cuda"
    assert compose["services"]["trainer-cpu"]["build"]["args"]["TORCH_VARIANT"] == "cpu"


def test_trainer_reserves_the_gpu_and_cpu_profile_does_not(compose: dict[str, Any]) -> None:
    services = compose["services"]
    devices = services["trainer"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    cpu = services["trainer-cpu"]
    assert "cpu" in cpu["profiles"] and "deploy" not in cpu and "gpus" not in cpu


def test_trainer_mounts_and_ports(compose: dict[str, Any], dockerfile: list[Instruction]) -> None:
    workdir = _of(dockerfile, "WORKDIR", _final_stage(dockerfile))[-1].args
    for name in ("trainer", "trainer-cpu"):
        svc = compose["services"][name]
        volumes = {v["target"]: v for v in svc["volumes"]}
        assert volumes["/data"].get("read_only") is True
        assert not volumes[f"{workdir}/experiments"].get("read_only")
        assert not volumes[svc["environment"]["HF_HOME"]].get("read_only")
        assert _container_ports(svc) == {8265}  # the MLflow UI is its own service (test_container_files.py)
        assert "command" not in svc and "entrypoint" not in svc  # run args reach tune_app.run
        assert svc["environment"]["HF_TOKEN"] is None  # passed through, never written down
        assert int(str(svc["shm_size"]).rstrip("gb")) >= 1


# --- Makefile -----------------------------------------------------------------------
def _make(*args: str) -> str:
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), *args], capture_output=True,
                          text=True, check=True, timeout=60).stdout


def test_make_help_lists_every_target() -> None:
    listed = set(re.findall(r"^\s+make (\S+)", _make("help"), re.M))
    wanted = {"install", "tune", "resume", "evaluate", "cleanup", "test", "lint", "format", "build", "shell",
              "tune-container", "mlflow-ui", "validate-env"}
    assert wanted <= listed, f"missing from make help: {sorted(wanted - listed)}"


def test_container_targets_run_the_same_module_commands(compose: dict[str, Any]) -> None:
    # The last line: docker/preflight.sh (container-dirs) runs first.
    cmd = shlex.split(_make("-n", "tune-container", "SERVICE=trainer", "ARGS=model=minilm tune.num_samples=2")
                      .splitlines()[-1])
    assert cmd[:4] == ["docker", "compose", "-f", "docker/docker-compose.yml"]
    assert (REPO / cmd[3]).resolve() == COMPOSE
    assert "run" in cmd and "--service-ports" in cmd
    assert cmd[-3:] == ["trainer", "model=minilm", "tune.num_samples=2"]
    for target in ("build", "shell"):
        assert shlex.split(_make("-n", target, "SERVICE=trainer-cpu"))[-1] == "trainer-cpu"
    assert _make("-n", "validate-env", "ARGS=model=minilm").split()[1:] == ["-m", "tune_app.validate_env",
                                                                            "model=minilm"]
    ui = shlex.split(_make("-n", "mlflow-ui"))
    assert ui == [".venv/bin/mlflow", "ui", "--backend-store-uri", "sqlite:///experiments/mlflow.db",
                  "--host", "127.0.0.1", "--port", "5000"]


def test_mlflow_ui_port_and_host_are_settable(monkeypatch: pytest.MonkeyPatch) -> None:
    ui = shlex.split(_make("-n", "mlflow-ui", "PORT=5055"))
    assert ui[-4:] == ["--host", "127.0.0.1", "--port", "5055"]
    assert shlex.split(_make("-n", "mlflow-ui", "HOST=0.0.0.0", "PORT=5056"))[-4:] == [
        "--host", "0.0.0.0", "--port", "5056"]
    assert "http://127.0.0.1:5055 " in _make("help", "PORT=5055")  # the help text shows the port used
    monkeypatch.setenv("HOST", "some-hostname")  # tcsh exports HOST: the UI must stay on loopback
    assert shlex.split(_make("-n", "mlflow-ui"))[-4:] == ["--host", "127.0.0.1", "--port", "5000"]
