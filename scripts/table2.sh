#!/usr/bin/env bash
# Trains and evaluates every row of the MSWA paper's Table 2 (attention mechanisms, Transformer-XL model; Wikitext-103 + enwik8),
# writing results/table2/<dataset>/<row>.json and results/tables.md. Rows: configs/tables/table2.yaml.
#   scripts/table2.sh [--gpus N] [--max-update N] [--data-dir DIR] [--rows a,b] [--datasets d]
#   scripts/table2.sh --smoke     # every row, a few updates, tiny built-in corpus, CPU
#   flock /tmp/mswa-cpu.lock scripts/table2.sh --scale cpu   # every row shrunk for 2 CPU cores (minutes),
#       results/cpu/table2.{json,md,png} beside the paper; --seed 2 --rows a,b: noise; --verbose
#   scripts/table2.sh --dry-run   # print the fairseq commands
# More knobs: python scripts/reproduce.py --help
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; fi
exec "$PY" "$ROOT/scripts/reproduce.py" --table 2 "$@"
