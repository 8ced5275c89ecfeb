#!/usr/bin/env bash
# Sets up the environment if needed, then runs the offline demo: SWA vs MSWA (same base window)
# trained with fairseq-train on text that ships with Python, evaluated with fairseq-eval-lm.
# Shows one progress bar per model and the results; fairseq's full logs go to runs/demo/*.log
# (--verbose streams them; --quick: a few updates, for tests).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec python scripts/demo.py "$@"
