#!/usr/bin/env python
"""MSWA against SWA on tiled GPU kernels (studies/tiles.py):

    python scripts/tiles.py --json results/tiles/tiles.json --md results/tiles/tiles.md
"""

import sys

from studies.tiles import main

if __name__ == "__main__":
    sys.exit(main())
