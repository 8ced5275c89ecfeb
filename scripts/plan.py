#!/usr/bin/env python
"""Training compute of the MSWA paper's tables at paper scale (an estimate):

    python scripts/plan.py --json results/plan/compute.json --md results/plan/compute.md

Command-line front end of ``studies.plan`` (``--help`` for the details).
"""

import sys

from studies.plan import main

if __name__ == "__main__":
    sys.exit(main())
