#!/usr/bin/env bash
# Create .venv/ at the repo root from poetry.lock, without pulling a CUDA torch build.
#
# torch is installed first, on its own, at the locked version: pip then brings the
# build's own dependencies. Which build you get depends on where pip looks:
#   - this team's machines: the CPU wheel from the local wheel cache (no download);
#   - elsewhere, default PyPI: the CUDA build (what a GPU host wants);
#   - TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu make install: CPU-only elsewhere.
# The lock's CUDA-only lines (nvidia-*, triton) are left to that torch step, so a
# CPU install never downloads them.
#
# Steps: Poetry (in its own small venv) exports poetry.lock to a requirements file,
# pip installs torch, then the export, then this package (editable).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
TOOLS=${TUNE_APP_TOOLS_VENV:-.venv-tools}
start=$(date +%s)

"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed, found {sys.version}"'

if [ ! -x "$TOOLS/bin/poetry" ]; then
  echo "== poetry (tools venv $TOOLS)"
  "$PYTHON" -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q "poetry==2.5.1" "poetry-plugin-export>=1.9"
fi

echo "== checking poetry.lock matches pyproject.toml"
"$TOOLS/bin/poetry" check --lock

mkdir -p .venv
"$TOOLS/bin/poetry" export -f requirements.txt --without-hashes --with dev -o .venv/requirements.all.txt
torch_pin=$(grep -E '^torch==' .venv/requirements.all.txt | head -1 | cut -d';' -f1 | tr -d ' ')
grep -vE '^(nvidia-|cuda-|triton==|torch==)' .venv/requirements.all.txt > .venv/requirements.txt

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade "pip>=24"
echo "== $torch_pin ${TORCH_INDEX_URL:+from $TORCH_INDEX_URL}"
.venv/bin/pip install -q "$torch_pin" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
echo "== locked dependencies ($(grep -c . .venv/requirements.txt) lines)"
.venv/bin/pip install -q -r .venv/requirements.txt
.venv/bin/pip install -q --no-deps -e .

echo "== offline NLP data (NLTK stopwords/WordNet for TextAttack, when available)"
if [ -x scripts/install_nltk_data.sh ]; then scripts/install_nltk_data.sh || echo "warning: NLTK data not installed (augmentation off)"; fi

.venv/bin/pip check
.venv/bin/python -c "import torch, ray, optuna, transformers, datasets, mlflow, hydra, pyarrow, torchcrf; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), '| ray', ray.__version__)"
echo "== installed in $(( $(date +%s) - start )) s"
