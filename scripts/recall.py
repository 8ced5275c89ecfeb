#!/usr/bin/env python
"""Recall at distance (studies/recall.py):

    python scripts/recall.py [--report-only] [--dry-run] [--models xl_swa,xl_mswa] [--seeds 1,2,3]

Trains and tests every (model, seed) of the associative-recall study one at a time (resumable:
finished runs are skipped), then writes results/recall/recall.{json,md,png}.
"""

import sys

from studies.recall import main

if __name__ == "__main__":
    sys.exit(main())
