#!/usr/bin/env bash
# Trains and evaluates every row of the MSWA paper's Table 5 (base window scaling; Wikitext-103),
# writing results/table5/<dataset>/<row>.json and results/tables.md. Rows: configs/tables/table5.yaml.
#   scripts/table5.sh [--gpus N] [--max-update N] [--data-dir DIR] [--rows a,b] [--datasets d]
#   scripts/table5.sh --smoke     # every row, a few updates, tiny built-in corpus, CPU
#   flock /tmp/mswa-cpu.lock scripts/table5.sh --scale cpu   # every row shrunk for 2 CPU cores (minutes),
#       results/cpu/table5.{json,md,png} beside the paper; --seed 2 --rows a,b: noise; --verbose
#   scripts/table5.sh --dry-run   # print the fairseq commands
# More knobs: python scripts/reproduce.py --help
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; fi
exec "$PY" "$ROOT/scripts/reproduce.py" --table 5 "$@"
