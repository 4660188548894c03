#!/bin/sh
# Create the host folders docker/docker-compose.yml bind-mounts, as the user the container
# runs as, before `docker compose run/up` (the Makefile's container targets call this).
#
# Docker creates a missing bind-mount source as root: on a fresh clone experiments/ and the
# Hugging Face cache would be root-owned and the image's user (uid HOST_UID, 1000 by
# default) could not write them. The compose file no longer lets Docker create them
# (create_host_path: false); this script does, with the right owner, and stops with the
# fix when an existing folder is not writable by that uid.
#
# Same variables and defaults as the compose file; relative paths are relative to docker/,
# as compose reads them:
#   EXPERIMENTS_DIR (../experiments, written), HF_CACHE ($HOME/.cache/huggingface,
#   written), DATA_DIR (../data, read-only in the container: created, not checked),
#   HOST_UID / HOST_GID: the uid/gid the image was built with (default: yours; 1000 when
#   you are root, as the image's user cannot be root).
# Exit 0 when every folder is usable, 1 otherwise (one "preflight: FAIL ..." line each).
set -eu
cd "$(dirname "$0")"

default_id() {  # default_id -u|-g: the invoking user's id, 1000 for root
  v=$(id "$1"); [ "$v" = 0 ] && v=1000; echo "$v"
}
uid=${HOST_UID:-$(default_id -u)}
gid=${HOST_GID:-$(default_id -g)}
me=$(id -u)
failed=0

writable_by() {  # writable_by DIR UID GID: can that uid write DIR (owner, group or other bits)?
  if [ "$me" = "$2" ]; then
    [ -w "$1" ] && [ -x "$1" ]
    return
  fi
  info=$(stat -c '%u %g %a' "$1" 2>/dev/null) || return 1
  # shellcheck disable=SC2086
  set -- "$2" "$3" $info  # uid gid owner group mode
  bits=$(( 0$5 ))
  if [ "$3" = "$1" ]; then bits=$(( bits >> 6 )); elif [ "$4" = "$2" ]; then bits=$(( bits >> 3 )); fi
  [ $(( bits & 3 )) = 3 ]  # w and x
}

prepare() {  # prepare VAR HOST_PATH CONTAINER_PATH rw|ro
  path=$2
  if [ -e "$path" ] && [ ! -d "$path" ]; then
    echo "preflight: FAIL $1=$path is not a folder (mounted at $3)" >&2
    failed=1
    return
  fi
  if [ ! -d "$path" ]; then
    mkdir -p "$path"
    # Made by root for a container user that is not root: hand it over.
    if [ "$me" = 0 ] && [ "$uid" != 0 ]; then chown "$uid:$gid" "$path"; fi
    echo "preflight: created $path (owner $(stat -c %u:%g "$path" 2>/dev/null || echo "uid $me"))"
  fi
  path=$(cd "$path" && pwd)
  if [ "$4" = rw ] && ! writable_by "$path" "$uid" "$gid"; then
    echo "preflight: FAIL $1=$path (mounted at $3) is not writable by uid $uid, the container's user." \
         "Fix: chown -R $uid:$gid '$path' (as root), or build the image for its owner:" \
         "HOST_UID=$(stat -c %u "$path" 2>/dev/null || echo '<uid>') HOST_GID=$(stat -c %g "$path" 2>/dev/null || echo '<gid>') make build" >&2
    failed=1
    return
  fi
  echo "preflight: ok $path -> $3 ($4)"
}

prepare EXPERIMENTS_DIR "${EXPERIMENTS_DIR:-../experiments}" /app/experiments rw
prepare HF_CACHE "${HF_CACHE:-${HOME:-/root}/.cache/huggingface}" /cache/huggingface rw
prepare DATA_DIR "${DATA_DIR:-../data}" /data ro
exit "$failed"
