#!/bin/sh
# Container entrypoint: check the mounts are usable by this (non-root) user, then exec
# the command (python -m tune_app.run + the overrides) as PID 1's child under tini,
# so SIGTERM from `docker stop` reaches tune_app.run (which forwards it as SIGINT).
set -eu
for dir in /app/experiments "${HF_HOME:-/cache/huggingface}"; do
  if [ -d "$dir" ] && [ ! -w "$dir" ]; then
    echo "tune-entrypoint: $dir is not writable by uid $(id -u); rebuild with" \
         "--build-arg UID=\$(id -u) --build-arg GID=\$(id -g) or chown the host folder" >&2
    exit 2
  fi
done
exec "$@"
