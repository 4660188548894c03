#!/usr/bin/env bash
# Offline data for TextAttack augmentation (idempotent; never downloads at run time).
#
# 1. As root with apt: install Debian's wordnet-base + wordnet-sense-index when missing.
#    Without apt or root: a warning, and WordNet is used only if already installed.
# 2. `python -m tune_app.data.nltk_setup install`: copies (not symlinks) WordNet into
#    <venv>/share/nltk_data/corpora/wordnet, writes lexnames (from lexnames.5WN), the
#    English stopword list, and TextAttack's post-install marker.
# Env: PYTHON (default .venv/bin/python), TUNE_APP_NLTK_DATA, TA_CACHE_DIR, WORDNET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
WORDNET_DIR=${WORDNET_DIR:-/usr/share/wordnet}
PACKAGES=(wordnet-base wordnet-sense-index)

if [ ! -f "$WORDNET_DIR/data.noun" ] || [ ! -f "$WORDNET_DIR/index.sense" ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "warning: apt-get not available; cannot install ${PACKAGES[*]}: augment.method synonym/insert will be rejected (install WordNet into $WORDNET_DIR and re-run)" >&2
  elif [ "$(id -u)" != 0 ]; then
    echo "warning: not root; run 'sudo apt-get install -y --no-install-recommends ${PACKAGES[*]}' and re-run this script (synonym/insert unavailable until then)" >&2
  else
    echo "== apt-get install ${PACKAGES[*]}"
    if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${PACKAGES[@]}"); then
      echo "warning: apt-get install ${PACKAGES[*]} failed; synonym/insert unavailable" >&2
    fi
  fi
fi

if [ ! -x "$PYTHON" ]; then
  echo "warning: $PYTHON not found; create the venv first (scripts/install.sh)" >&2
  exit 0
fi
"$PYTHON" -m tune_app.data.nltk_setup install --wordnet-dir "$WORDNET_DIR"
