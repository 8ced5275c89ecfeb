#!/usr/bin/env python
"""The evidence study (fairseq_mswa/experiments/evidence.py; the queue is
configs/tables/evidence.yaml):

    python scripts/evidence.py [--report-only] [--dry-run] [--data-dir data-bin]

Trains and evaluates the queued (table, row, seed) runs one at a time (resumable: finished runs
are skipped), then writes results/evidence/evidence.{json,md,png}.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairseq_mswa.experiments.evidence import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
