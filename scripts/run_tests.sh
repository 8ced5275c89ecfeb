#!/usr/bin/env bash
# Sets up the environment if needed, then runs the whole test suite (CPU, 2 workers, < 15 min on 2 cores).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
. "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
# one pytest-xdist worker per core (at most 2), each test module on one worker (--dist loadfile:
# a module's fixtures are built once); every worker uses one torch thread (tests/conftest.py)
WORKERS="$(python -c 'import os; print(max(1, min(2, os.cpu_count() or 1)))')"
exec python -m pytest tests -q -n "$WORKERS" --dist loadfile "$@"
