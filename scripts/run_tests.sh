#!/usr/bin/env bash
# Sets up the environment if needed, then runs the whole test suite (CPU, < 15 min on 2 cores).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec python -m pytest tests -q "$@"
