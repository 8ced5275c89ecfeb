#!/usr/bin/env bash
# Creates .venv/ at the repository root (unless a virtualenv is already active), installs torch's
# CPU wheel when no torch is present, then this package with its dev extras. Idempotent: a second
# run only re-checks. Source it (". scripts/setup_env.sh") to stay in the environment.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x "$ROOT/.venv/bin/python" ]; then
    echo "[setup] creating $ROOT/.venv"
    "$PY" -m venv "$ROOT/.venv"
  fi
  # shellcheck disable=SC1091
  . "$ROOT/.venv/bin/activate"
fi
STAMP="$VIRTUAL_ENV/.fairseq_mswa_installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/setup.py" -nt "$STAMP" ]; then
  python -m pip install -q --upgrade pip
  if ! python -c "import torch" 2>/dev/null; then
    echo "[setup] installing torch (CPU build)"
    # the CPU wheel: from the local mirror if it has it, else PyTorch's CPU index
    python -m pip install -q "torch==2.13.0" 2>/dev/null \
      || python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
  echo "[setup] installing fairseq_mswa and its dependencies"
  python -m pip install -q -e "$ROOT[dev]"
  touch "$STAMP"
fi
