#!/usr/bin/env python
"""The evidence study (studies/evidence.py; the queue is
configs/tables/evidence.yaml):

    python scripts/evidence.py [--report-only] [--dry-run] [--data-dir data-bin]

Trains and evaluates the queued (table, row, seed) runs one at a time (resumable: finished runs
are skipped), then writes results/evidence/evidence.{json,md,png}.
"""

import sys

from studies.evidence import main

if __name__ == "__main__":
    sys.exit(main())
