"""Container files beyond tests/test_docker_files.py, checked without a container engine:
build arguments for a machine without a registry, pip cache mounts, the compose services'
ports (distinct, env-configurable), the UIs beside a study, docker/preflight.sh (the mount
folders created with the right owner), and scripts/container_smoke.sh (its syntax only:
the real run is documented in docs/container.md)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_docker_files import (
    Instruction,
    _arg_defaults,
    _dockerignored,
    _of,
    parse_dockerfile,
)

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
PREFLIGHT = DOCKER / "preflight.sh"
DASHBOARD_DOCKERFILE = DOCKER / "optuna-dashboard.Dockerfile"
SMOKE = REPO / "scripts" / "container_smoke.sh"
VAR = re.compile(r"\$\{(\w+)(?::-((?:[^{}]|\$\{[^}]*\})*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose-style ${VAR:-default} / ${VAR} substitution (nested defaults included)."""
    def sub(m: re.Match[str]) -> str:
        if env.get(m.group(1)):
            return env[m.group(1)]
        return interpolate(m.group(2) or "", env)
    return VAR.sub(sub, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile((DOCKER / "Dockerfile").read_text())


def _published(service: dict[str, Any], env: dict[str, str]) -> list[tuple[str, int, int]]:
    out = []
    for spec in service.get("ports", []):
        ip, host, container = interpolate(str(spec), env).split(":")
        out.append((ip, int(host), int(container)))
    return out


# --- compose: ports -------------------------------------------------------------------
def test_every_service_publishes_on_loopback_with_distinct_host_ports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"trainer", "trainer-cpu", "mlflow-ui", "optuna-dashboard"} <= set(services)
    # trainer and trainer-cpu are alternatives (one per host); each runs beside both UIs.
    for trainer in ("trainer", "trainer-cpu"):
        ports = [p for name in (trainer, "mlflow-ui", "optuna-dashboard") for p in _published(services[name], {})]
        assert all(ip == "127.0.0.1" for ip, _, _ in ports)
        hosts = [h for _, h, _ in ports]
        assert len(hosts) == len(set(hosts)), f"port clash beside {trainer}: {hosts}"
    assert {(h, c) for _, h, c in _published(services["trainer"], {})} == {(8265, 8265)}
    assert {(h, c) for _, h, c in _published(services["mlflow-ui"], {})} == {(5000, 5000)}
    assert {(h, c) for _, h, c in _published(services["optuna-dashboard"], {})} == {(8080, 8080)}


def test_each_published_port_is_set_by_its_own_variable(compose: dict[str, Any]) -> None:
    wanted = {"trainer": "RAY_DASHBOARD_PORT", "trainer-cpu": "RAY_DASHBOARD_PORT",
              "mlflow-ui": "MLFLOW_UI_PORT", "optuna-dashboard": "OPTUNA_DASHBOARD_PORT"}
    env = {"RAY_DASHBOARD_PORT": "18265", "MLFLOW_UI_PORT": "15055", "OPTUNA_DASHBOARD_PORT": "18081"}
    for name, var in wanted.items():
        (spec,) = compose["services"][name]["ports"]
        found = VAR.search(spec)
        assert found and found.group(1) == var
        (_, host, container), = _published(compose["services"][name], env)
        assert host == int(env[var]) and container != host  # only the host side moves


def test_mlflow_ui_serves_the_studies_store_on_its_container_port(compose: dict[str, Any]) -> None:
    svc = compose["services"]["mlflow-ui"]
    entry = svc["entrypoint"]
    assert entry[:2] == ["tini", "--"] and "tune-entrypoint" in entry  # the mount check runs first
    ui = entry[entry.index("mlflow"):]
    assert ui[:2] == ["mlflow", "ui"]
    opts = dict(zip(ui[2::2], ui[3::2], strict=True))
    assert opts["--backend-store-uri"] == "sqlite:////app/experiments/mlflow.db"
    assert opts["--host"] == "0.0.0.0"
    (_, _, container), = _published(svc, {})
    assert int(opts["--port"]) == container
    assert svc["command"] == []  # no Hydra overrides reach mlflow
    assert svc["image"] == compose["services"]["trainer-cpu"]["image"]  # the lock's MLflow, CPU image
    assert [v["target"] for v in svc["volumes"]] == ["/app/experiments"]
    assert "ui" in svc["profiles"] and "ui" in compose["services"]["optuna-dashboard"]["profiles"]


def test_optuna_dashboard_reads_the_studys_optuna_db(compose: dict[str, Any]) -> None:
    svc = compose["services"]["optuna-dashboard"]
    (url,) = svc["command"]
    tune_name = yaml.safe_load((REPO / "configs" / "tune" / "default.yaml").read_text())["name"]
    assert interpolate(url, {}) == f"sqlite:////app/experiments/{tune_name}/optuna.db"
    assert interpolate(url, {"STUDY_NAME": "other"}) == "sqlite:////app/experiments/other/optuna.db"
    assert [v["target"] for v in svc["volumes"]] == ["/app/experiments"]
    assert (REPO / svc["build"]["context"].replace("..", ".") / svc["build"]["dockerfile"]).resolve() \
        == DASHBOARD_DOCKERFILE
    entry = yaml.safe_load(_of(parse_dockerfile(DASHBOARD_DOCKERFILE.read_text()), "ENTRYPOINT")[-1].args)
    port = entry[entry.index("--port") + 1]
    (_, _, container), = _published(svc, {})
    assert int(port) == container and entry[entry.index("--host") + 1] == "0.0.0.0"


def test_optuna_dashboard_image_pins_the_locks_optuna() -> None:
    ins = parse_dockerfile(DASHBOARD_DOCKERFILE.read_text())
    defaults = _arg_defaults(ins)
    lock = tomllib.loads((REPO / "poetry.lock").read_text())
    optuna = next(p["version"] for p in lock["package"] if p["name"] == "optuna")
    assert defaults["OPTUNA_VERSION"] == optuna
    assert re.fullmatch(r"\d+\.\d+\.\d+", defaults["OPTUNA_DASHBOARD_VERSION"])
    assert defaults["PYTHON_IMAGE"] == _arg_defaults(parse_dockerfile((DOCKER / "Dockerfile").read_text()))[
        "PYTHON_IMAGE"]
    users = _of(ins, "USER")
    assert users and users[-1].args not in {"root", "0"}


# --- compose: mounts ------------------------------------------------------------------
def test_docker_never_creates_a_mount_folder_as_root(compose: dict[str, Any]) -> None:
    # docker/preflight.sh creates each bind source instead: same variable, same default.
    prepared = dict(re.findall(r'^prepare (\w+) "(.+?)" ', PREFLIGHT.read_text(), re.M))
    assert set(prepared) == {"EXPERIMENTS_DIR", "HF_CACHE", "DATA_DIR"}
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            assert isinstance(vol, dict) and vol["type"] == "bind", f"{name}: {vol}"
            assert vol["bind"]["create_host_path"] is False, f"{name}: Docker would create {vol['source']} as root"
            var = VAR.match(vol["source"])
            assert var and var.group(1) in prepared, f"{name}: {vol['source']} not created by preflight.sh"
            for env in ({"HOME": "/h"}, {"HOME": "/h", var.group(1): "/elsewhere"}):
                assert interpolate(vol["source"], env) == interpolate(prepared[var.group(1)], env)


def test_build_args_give_the_image_the_callers_uid(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        args = svc["build"]["args"]
        assert interpolate(args["UID"], {}) == "1000" and interpolate(args["UID"], {"HOST_UID": "1234"}) == "1234"
        assert interpolate(args["GID"], {"HOST_GID": "55"}) == "55", name


# --- Dockerfile: build arguments, caches ------------------------------------------------
def test_base_image_and_torch_source_are_build_args(dockerfile: list[Instruction]) -> None:
    defaults = _arg_defaults(dockerfile)
    assert defaults["PYTHON_IMAGE"].startswith("python:3.11")
    assert all(i.args.split()[0] == "${PYTHON_IMAGE}" for i in _of(dockerfile, "FROM"))
    assert defaults["TORCH_CPU_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    torch_run = next(i.args for i in _of(dockerfile, "RUN", "builder") if "TORCH_VARIANT" in i.args)
    # An empty TORCH_CPU_INDEX_URL drops --index-url (PyPI + docker/wheels); a CPU variant
    # that still got a CUDA build fails the build.
    assert '${TORCH_CPU_INDEX_URL:+--index-url "$TORCH_CPU_INDEX_URL"}' in torch_run
    assert "torch.version.cuda" in torch_run
    # PIP_CERT: declared (no default) in every stage that runs pip against an index.
    for stage in ("export", "builder"):
        assert any(i.args == "PIP_CERT" for i in _of(dockerfile, "ARG", stage)), stage
    # No stage needs pip or `python` on PATH (a Debian base has neither): venvs from python3.
    for i in _of(dockerfile, "RUN"):
        assert not re.search(r"(^|&&\s*)(pip|python) ", i.args), i.args


def test_pip_downloads_go_through_a_cache_mount(dockerfile: list[Instruction]) -> None:
    dashboard = parse_dockerfile(DASHBOARD_DOCKERFILE.read_text())
    downloading = [i for i in [*dockerfile, *dashboard] if i.keyword == "RUN" and "pip install" in i.args
                   and "--no-deps -e ." not in i.args]
    assert len(downloading) >= 3
    for i in downloading:
        assert "--mount=type=cache,target=/root/.cache/pip" in i.args, i.args
        assert "--no-cache-dir" not in i.args, i.args


def test_wheel_folder_is_in_git_empty_and_in_the_build_context(dockerfile: list[Instruction]) -> None:
    wheels_run = [i.args for i in _of(dockerfile, "RUN", "builder") if "type=bind,source=docker/wheels" in i.args]
    assert len(wheels_run) == 1 and "--find-links /wheels" in wheels_run[0]
    gitignore = (DOCKER / "wheels" / ".gitignore").read_text().split()
    assert "*" in gitignore and "!.gitignore" in gitignore
    patterns = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    assert not _dockerignored("docker/wheels", patterns)
    assert not _dockerignored("docker/optuna-dashboard.Dockerfile", patterns)


# --- docker/preflight.sh ----------------------------------------------------------------
def _run_preflight(root: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    (root / "docker").mkdir(exist_ok=True)
    shutil.copy2(PREFLIGHT, root / "docker" / "preflight.sh")
    full = {"PATH": "/usr/bin:/bin", "HOME": str(root / "home"), **env}
    return subprocess.run(["sh", str(root / "docker" / "preflight.sh")], capture_output=True, text=True,
                          env=full, timeout=30)


def _expected_owner() -> int:
    return 1000 if os.geteuid() == 0 else os.geteuid()


def test_preflight_creates_the_mounts_owned_by_the_images_user(tmp_path: Path) -> None:
    out = _run_preflight(tmp_path, {})
    assert out.returncode == 0, out.stderr
    # Relative defaults are relative to docker/, as compose reads them: the repo root.
    for folder in (tmp_path / "experiments", tmp_path / "data", tmp_path / "home" / ".cache" / "huggingface"):
        assert folder.is_dir(), out.stdout
        assert folder.stat().st_uid == _expected_owner()
    assert out.stdout.count("preflight: ok") == 3
    # A second run changes nothing and still passes.
    again = _run_preflight(tmp_path, {})
    assert again.returncode == 0 and "created" not in again.stdout


def test_preflight_honours_the_compose_variables(tmp_path: Path) -> None:
    env = {"EXPERIMENTS_DIR": str(tmp_path / "big" / "exp"), "HF_CACHE": "../hf", "DATA_DIR": str(tmp_path / "csv")}
    out = _run_preflight(tmp_path, env)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "big" / "exp").is_dir() and (tmp_path / "hf").is_dir() and (tmp_path / "csv").is_dir()
    assert not (tmp_path / "experiments").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a folder to another uid needs root")
def test_preflight_as_root_hands_new_folders_to_host_uid(tmp_path: Path) -> None:
    out = _run_preflight(tmp_path, {"HOST_UID": "1234", "HOST_GID": "4321"})
    assert out.returncode == 0, out.stderr
    st = (tmp_path / "experiments").stat()
    assert (st.st_uid, st.st_gid) == (1234, 4321)


def test_preflight_stops_on_a_folder_the_container_cannot_write(tmp_path: Path) -> None:
    exp = tmp_path / "experiments"
    exp.mkdir()
    uid = _expected_owner()
    # Owned by someone else (as root: root itself) and not writable by others.
    other = uid + 1
    env = {"HOST_UID": str(other), "HOST_GID": str(other)}
    if os.geteuid() != 0:
        exp.chmod(0o555)  # not root: make it unwritable for ourselves
        env = {}
    else:
        exp.chmod(0o755)
    try:
        out = _run_preflight(tmp_path, env)
    finally:
        exp.chmod(0o755)
    assert out.returncode == 1
    (line,) = [ln for ln in out.stderr.splitlines() if ln.startswith("preflight: FAIL")]
    assert "EXPERIMENTS_DIR=" in line and "/app/experiments" in line and "not writable by uid" in line
    assert "Fix: chown -R" in line and "make build" in line
    # Other-writable is fine for anyone.
    exp.chmod(0o777)
    assert _run_preflight(tmp_path, env).returncode == 0


def test_preflight_rejects_a_file_where_a_folder_goes(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a folder")
    out = _run_preflight(tmp_path, {})
    assert out.returncode == 1 and "DATA_DIR=../data is not a folder" in out.stderr


def test_preflight_and_scripts_are_executable_and_parse() -> None:
    for script, shell in ((PREFLIGHT, "sh"), (DOCKER / "entrypoint.sh", "sh"), (SMOKE, "bash")):
        assert script.stat().st_mode & stat.S_IXUSR, f"{script} must be executable"
        subprocess.run([shell, "-n", str(script)], check=True)


# --- Makefile -------------------------------------------------------------------------
def _make(*args: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), *args], capture_output=True,
                          text=True, check=True, timeout=60, env=env).stdout


def test_compose_targets_run_the_preflight_first() -> None:
    for target in ("tune-container", "shell", "container-uis"):
        lines = _make("-n", target, "SERVICE=trainer-cpu").splitlines()
        assert lines[0] == "sh docker/preflight.sh", target
        assert lines[-1].startswith("docker compose -f docker/docker-compose.yml"), target
    assert _make("-n", "container-uis").splitlines()[-1].endswith(" up -d mlflow-ui optuna-dashboard")
    assert _make("-n", "container-smoke").strip() == "bash scripts/container_smoke.sh"


def test_make_passes_the_callers_uid_to_compose() -> None:
    show = ["--eval", "show-ids: ; @echo $$HOST_UID $$HOST_GID", "show-ids"]
    uid, gid = _make(*show, env={k: v for k, v in os.environ.items() if k not in {"HOST_UID", "HOST_GID"}}).split()
    assert int(uid) == _expected_owner()
    assert int(gid) == (1000 if os.getegid() == 0 else os.getegid())
    assert _make(*show, env={**os.environ, "HOST_UID": "4242", "HOST_GID": "7"}).split() == ["4242", "7"]
