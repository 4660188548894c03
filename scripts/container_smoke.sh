#!/usr/bin/env bash
# Container smoke test: build the CPU image with podman and run a study inside it.
#
# Made for machines with no container registry and no Docker engine (Debian bookworm with
# podman 4.3 / buildah 1.28, run as root), as on this team's machines:
#   1. base   a Debian bookworm image made from Debian's packages (mmdebstrap: python3.11,
#             python3-venv), imported as $BASE_IMAGE (skipped when it already exists);
#   2. build  podman build (vfs storage, chroot isolation) of docker/Dockerfile with
#             PYTHON_IMAGE=$BASE_IMAGE, TORCH_VARIANT=cpu; torch comes from the wheels in
#             $WHEELS_FROM (copied into docker/wheels/) when TORCH_CPU_INDEX_URL is empty;
#   3. deny   the entrypoint refuses a root-owned experiments folder (exit 2, a fix printed);
#   4. run    the image's ENTRYPOINT (tini -> tune-entrypoint -> python -m tune_app.run, i.e.
#             `make tune` on the embedded default study) with `buildah run --isolation=chroot`
#             (`podman run` cannot set rlimits here), experiments/ bind-mounted from the host;
#   5. check  the study finished: evaluation_report.json, optuna.db, mlflow.db on the host;
#   6. uis    (SMOKE_UIS=1) the MLflow UI from this image and optuna-dashboard from
#             docker/optuna-dashboard.Dockerfile, both on the finished study, answer HTTP.
# Prints the seconds each step took. Not for CI: a cold build takes far longer than CI has.
#
# Env: SMOKE_DIR (work folder, default /var/tmp/tune_app-smoke), BASE_IMAGE, IMAGE,
#      TORCH_CPU_INDEX_URL (default empty: PyPI + docker/wheels), WHEELS_FROM (/opt/wheels),
#      STUDY_ARGS (Hydra overrides, default none = the embedded default study),
#      HOST_CA (CA bundle for pip in the build; default: $PIP_CERT, else pip config global.cert),
#      REUSE_IMAGE (1: skip step 2 when $IMAGE exists), SMOKE_UIS (1: step 6), KEEP (1: keep the containers), LAYERS (podman build --layers).
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE_DIR=${SMOKE_DIR:-/var/tmp/tune_app-smoke}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian-bookworm-python311}
IMAGE=${IMAGE:-localhost/tune_app:cpu}
TORCH_CPU_INDEX_URL=${TORCH_CPU_INDEX_URL-}
WHEELS_FROM=${WHEELS_FROM:-/opt/wheels}
STUDY_ARGS=${STUDY_ARGS:-}
SMOKE_UIS=${SMOKE_UIS:-0}
KEEP=${KEEP:-0}
# vfs stores every layer as a full copy: with a layer per instruction a 3 GB image needs
# tens of GB. LAYERS=true keeps them (a rebuild then reuses unchanged steps).
LAYERS=${LAYERS:-false}
REUSE_IMAGE=${REUSE_IMAGE:-0}
UID_IN_IMAGE=1000
PODMAN=(podman --storage-driver=vfs)
BUILDAH=(buildah --storage-driver=vfs)

t0=$(date +%s)
step_start=$t0
declare -a TIMINGS=()
step() { echo; echo "== [$(date -u +%H:%M:%S)] $*"; step_start=$(date +%s); }
done_step() { local s=$(( $(date +%s) - step_start )); TIMINGS+=("$1 ${s}s"); echo "-- $1: ${s} s"; }
fail() { echo "SMOKE FAILED: $*" >&2; exit 1; }

for tool in podman buildah mmdebstrap; do
  command -v "$tool" >/dev/null || fail "$tool not found (apt-get install -y podman mmdebstrap)"
done
[ "$(id -u)" = 0 ] || fail "run as root (rootful podman with vfs storage)"
mkdir -p "$SMOKE_DIR"
echo "podman $(podman --version | awk '{print $3}'), buildah $(buildah --version | awk '{print $3}'), $(nproc) CPUs, free disk $(df -h --output=avail "$SMOKE_DIR" | tail -1)"

# --- 1. base image from Debian's packages ---------------------------------------------
step "base image $BASE_IMAGE"
if "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
  echo "exists: reused"
else
  mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$SMOKE_DIR/rootfs.tar"
  "${PODMAN[@]}" import --change 'CMD ["python3"]' "$SMOKE_DIR/rootfs.tar" "$BASE_IMAGE"
  rm -f "$SMOKE_DIR/rootfs.tar"
fi
"${BUILDAH[@]}" inspect --type image "$BASE_IMAGE" >/dev/null
done_step base

# --- 2. the CPU image ---------------------------------------------------------------
# A CA bundle for pip inside the build when this machine's pip uses one (TLS-inspecting proxy).
CERT_ARGS=()
HOST_CA=${HOST_CA:-${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}}
if [ -n "$HOST_CA" ] && [ -f "$HOST_CA" ]; then
  CERT_ARGS=(-v "$HOST_CA:/etc/ssl/certs/build-ca.crt:ro" --build-arg PIP_CERT=/etc/ssl/certs/build-ca.crt)
fi
copied=()
cleanup_wheels() { [ ${#copied[@]} -eq 0 ] || rm -f "${copied[@]}"; }
trap cleanup_wheels EXIT
if [ "$REUSE_IMAGE" = 1 ] && "${PODMAN[@]}" image exists "$IMAGE"; then
  echo; echo "== $IMAGE exists, not rebuilt (REUSE_IMAGE=1)"
else
  step "build $IMAGE (PYTHON_IMAGE=$BASE_IMAGE, TORCH_CPU_INDEX_URL='${TORCH_CPU_INDEX_URL}')"
  if [ -z "$TORCH_CPU_INDEX_URL" ] && [ -d "$WHEELS_FROM" ]; then
    for whl in "$WHEELS_FROM"/*.whl; do
      [ -e "$whl" ] || continue
      dest="docker/wheels/$(basename "$whl")"
      if [ ! -e "$dest" ]; then cp "$whl" "$dest"; copied+=("$dest"); fi
    done
    echo "docker/wheels/: $(find docker/wheels -name '*.whl' -printf '%f ')"
  fi
  "${PODMAN[@]}" build --isolation=chroot --layers="$LAYERS" -f docker/Dockerfile -t "$IMAGE" \
    --build-arg PYTHON_IMAGE="$BASE_IMAGE" \
    --build-arg TORCH_VARIANT=cpu \
    --build-arg TORCH_CPU_INDEX_URL="$TORCH_CPU_INDEX_URL" "${CERT_ARGS[@]}" \
    . > "$SMOKE_DIR/build.log" 2>&1 || { tail -30 "$SMOKE_DIR/build.log"; fail "podman build failed (log: $SMOKE_DIR/build.log)"; }
  grep -E 'STEP [0-9]+/[0-9]+: (FROM|RUN)|^COMMIT|^torch |cuda build|Successfully installed torch' "$SMOKE_DIR/build.log" | cut -c1-160
  "${PODMAN[@]}" image ls "$IMAGE"
  done_step build
fi

step "working container from $IMAGE (vfs copies the image)"
ctr=tune_app-smoke-$$
"${BUILDAH[@]}" from --name "$ctr" "$IMAGE" >/dev/null
"${BUILDAH[@]}" config --env TINI_SUBREAPER=1 "$ctr"   # tini is not PID 1 under buildah run
remove_ctr() { [ "$KEEP" = 1 ] || "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true; }
trap 'cleanup_wheels; remove_ctr' EXIT
mapfile -t ENTRY < <("${BUILDAH[@]}" inspect --type image "$IMAGE" \
  | python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin)["OCIv1"]["config"]["Entrypoint"]))')
[ "${#ENTRY[@]}" -gt 0 ] || fail "no ENTRYPOINT in $IMAGE"
echo "ENTRYPOINT: ${ENTRY[*]}; user: $("${BUILDAH[@]}" inspect --type image --format '{{.OCIv1.Config.User}}' "$IMAGE")"
# One bind mount per run: with two -v mounts, buildah 1.28's chroot isolation now and then
# showed another folder (owned by uid 1000) at /app/experiments (seen here, 2 runs in 6). The default
# study needs no Hugging Face cache: the image's own /cache/huggingface serves.
run_in() {  # run_in HOST_EXPERIMENTS_DIR CMD...
  local exp=$1; shift
  "${BUILDAH[@]}" run --isolation=chroot -v "$exp:/app/experiments" "$ctr" -- "$@"
}
done_step from

# --- 3. the entrypoint refuses a folder it cannot write --------------------------------
step "entrypoint on a root-owned experiments folder"
rm -rf "$SMOKE_DIR/experiments-root" && mkdir -p "$SMOKE_DIR/experiments-root"   # root:root 755
set +e
run_in "$SMOKE_DIR/experiments-root" "${ENTRY[@]}" --help > "$SMOKE_DIR/deny.log" 2>&1
rc=$?
set -e
cat "$SMOKE_DIR/deny.log"
if [ "$rc" != 2 ] || ! grep -q "not writable by uid $UID_IN_IMAGE" "$SMOKE_DIR/deny.log"; then
  fail "expected exit 2 and 'not writable by uid $UID_IN_IMAGE', got exit $rc"
fi
done_step deny

# --- 4. a study inside the image ------------------------------------------------------
step "study: ${ENTRY[*]} ${STUDY_ARGS}"
exp=$SMOKE_DIR/experiments
rm -rf "$exp" && mkdir -p "$exp" && chown "$UID_IN_IMAGE:$UID_IN_IMAGE" "$exp"   # what docker/preflight.sh does
# shellcheck disable=SC2086
if ! run_in "$exp" "${ENTRY[@]}" $STUDY_ARGS 2>&1 | tee "$SMOKE_DIR/study.log"; then
  fail "the study exited non-zero (log: $SMOKE_DIR/study.log)"
fi
done_step study

# --- 5. what it left on the host -------------------------------------------------------
step "check"
# <storage_path>/<tune.name>/evaluation_report.json (MLflow keeps a copy under mlartifacts/)
report=$(find "$exp" -mindepth 2 -maxdepth 2 -name evaluation_report.json | head -1)
[ -n "$report" ] || fail "no <study>/evaluation_report.json under $exp"
study_dir=$(dirname "$report")
[ -f "$study_dir/optuna.db" ] || fail "no optuna.db in $study_dir"
grep -q '^Study complete: ' "$SMOKE_DIR/study.log" || fail "no 'Study complete' line in the study's output"
[ -f "$exp/mlflow.db" ] || fail "no mlflow.db in $exp"
echo "report: ${report#"$SMOKE_DIR"/}"
echo "owner of the files written: $(stat -c '%u:%g' "$report") (uid in image $UID_IN_IMAGE)"
python3 - "$report" "$study_dir/optuna.db" <<'PY'
import json, sqlite3, sys
rep = json.load(open(sys.argv[1]))
keys = sorted(rep)[:12]
print("report keys:", keys)
con = sqlite3.connect(f"file:{sys.argv[2]}?mode=ro", uri=True)
print("optuna.db trials by state:", dict(con.execute("select state, count(*) from trials group by state").fetchall()))
PY
done_step check

# --- 6. the UIs beside the study (optional) ---------------------------------------------
if [ "$SMOKE_UIS" = 1 ]; then
  step "MLflow UI and optuna-dashboard on the study"
  "${PODMAN[@]}" build --isolation=chroot --layers="$LAYERS" -f docker/optuna-dashboard.Dockerfile -t localhost/tune_app-optuna-dashboard \
    --build-arg PYTHON_IMAGE="$BASE_IMAGE" "${CERT_ARGS[@]}" . > "$SMOKE_DIR/build-dashboard.log" 2>&1 \
    || fail "optuna-dashboard image build failed (log: $SMOKE_DIR/build-dashboard.log)"
  dash=tune_app-smoke-dash-$$
  "${BUILDAH[@]}" from --name "$dash" localhost/tune_app-optuna-dashboard >/dev/null
  study_rel=${study_dir#"$exp"/}
  # chroot isolation shares the host's network: the ports are the host's.
  # setsid: each server gets its own process group, stopped as a whole below.
  setsid "${BUILDAH[@]}" run --isolation=chroot -v "$exp:/app/experiments" "$ctr" -- mlflow ui --backend-store-uri sqlite:////app/experiments/mlflow.db --host 127.0.0.1 --port 15000 \
    > "$SMOKE_DIR/mlflow-ui.log" 2>&1 &
  ui_pid=$!
  setsid "${BUILDAH[@]}" run --isolation=chroot -v "$exp:/app/experiments:ro" "$dash" -- \
    optuna-dashboard "sqlite:////app/experiments/$study_rel/optuna.db" --host 127.0.0.1 --port 18080 \
    > "$SMOKE_DIR/optuna-dashboard.log" 2>&1 &
  dash_pid=$!
  ok=0
  for _ in $(seq 1 60); do
    a=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:15000/ || true)
    b=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:18080/api/studies || true)
    if [ "$a" = 200 ] && [ "$b" = 200 ]; then ok=1; break; fi
    sleep 2
  done
  echo "MLflow UI / -> $a; MLflow experiments: $(curl -s -X POST -H 'Content-Type: application/json' -d '{"max_results": 10}' http://127.0.0.1:15000/api/2.0/mlflow/experiments/search | python3 -c 'import json,sys; print([e["name"] for e in json.load(sys.stdin).get("experiments", [])])' 2>&1)"
  echo "optuna-dashboard /api/studies -> $b: $(curl -s http://127.0.0.1:18080/api/studies | python3 -c 'import json,sys; d=json.load(sys.stdin); print([(s["study_name"], s.get("n_trials")) for s in d.get("study_summaries", [])])' 2>&1)"
  kill -- -"$ui_pid" -"$dash_pid" 2>/dev/null || true
  wait "$ui_pid" "$dash_pid" 2>/dev/null || true
  [ "$KEEP" = 1 ] || "${BUILDAH[@]}" rm "$dash" >/dev/null 2>&1 || true
  [ "$ok" = 1 ] || fail "a UI did not answer 200 (logs: $SMOKE_DIR/mlflow-ui.log, $SMOKE_DIR/optuna-dashboard.log)"
  done_step uis
fi

echo
echo "SMOKE PASSED in $(( $(date +%s) - t0 )) s: ${TIMINGS[*]}"
