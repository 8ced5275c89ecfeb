#!/usr/bin/env bash
# The SWAA adaptation study: a full-attention transformer_xl_mswa (trained here on the offline demo
# corpus unless --checkpoint CKPT --data DATA-BIN is given) evaluated with no training and after brief
# fine-tuning under SWA / MSWA targets (+ sinks, + full layers); writes results/adaptation/
# adaptation.{json,md,png}, full fairseq logs under runs/adaptation/logs/.
#   scripts/adaptation.sh                      # CPU-scale run (~20 minutes on 2 cores)
#   scripts/adaptation.sh --smoke              # tiny model, a few updates (CI, ~20 s)
#   scripts/adaptation.sh --checkpoint CKPT --data DATA-BIN [--window 128] [--finetune-updates N]
# More knobs: python scripts/adapt.py --help
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; fi
exec "$PY" "$ROOT/scripts/adapt.py" "$@"
