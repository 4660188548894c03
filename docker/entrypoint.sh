#!/bin/sh
# Container entrypoint: check the mounts are usable by this (non-root) user, then exec
# the command (python -m tune_app.run + the overrides) as PID 1's child under tini,
# so SIGTERM from `docker stop` reaches tune_app.run (which forwards it as SIGINT).
set -eu
for dir in /app/experiments "${HF_HOME:-/cache/huggingface}"; do
  if [ -d "$dir" ] && { [ ! -w "$dir" ] || [ ! -x "$dir" ]; }; then
    owner=$(stat -c %u:%g "$dir" 2>/dev/null || echo '?')
    echo "tune-entrypoint: $dir is not writable by uid $(id -u) (the mounted host folder is owned by $owner)." \
         "On the host: make container-dirs (docker/preflight.sh) creates the mounts with the right owner;" \
         "for an existing folder chown -R $(id -u):$(id -g) it, or rebuild the image for its owner with" \
         "HOST_UID=<its uid> HOST_GID=<its gid> make build (--build-arg UID=... GID=...)" >&2
    exit 2
  fi
done
exec "$@"
