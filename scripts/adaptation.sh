#!/usr/bin/env bash
# The SWAA adaptation study: a full-attention transformer_xl_mswa (trained here on the Shakespeare
# byte corpus unless --checkpoint CKPT --data DATA-BIN is given) evaluated with no training and after
# fine-tuning under SWA / MSWA targets (+ sinks, + full layers, + learned sinks; several seeds and
# lengths for SWA vs cost-matched MSWA), and decoded with and without full-attention decode; writes
# results/adaptation/adaptation.{json,md,png}, full fairseq logs under runs/adaptation/logs/.
#   scripts/adaptation.sh                      # CPU-scale run (~33 minutes on 2 cores)
#   scripts/adaptation.sh --smoke              # tiny model, one target per recipe (CI, ~3 min)
#   scripts/adaptation.sh --checkpoint CKPT --data DATA-BIN [--window 128] [--finetune-updates N]
# More knobs: python scripts/adapt.py --help
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; fi
exec "$PY" "$ROOT/scripts/adapt.py" "$@"
