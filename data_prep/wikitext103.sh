#!/usr/bin/env bash
# Prepares wikitext103 for fairseq under data-bin/ (see data_prep/prepare.py for the details):
# download with resume + sha256 check, extract, split, fairseq-preprocess, atomic and idempotent.
#   data_prep/wikitext103.sh [--archive PATH] [--root DIR] [--workers N]
# Offline: download the archive by hand and pass --archive PATH.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m data_prep.prepare wikitext103 --root "$ROOT/data-bin" "$@"
