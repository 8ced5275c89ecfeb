#!/usr/bin/env python
"""SWAA adaptation study: turn a full-attention Transformer-XL into a windowed one, SWA or MSWA.

    python scripts/adapt.py            # CPU-scale run on the demo corpus

Command-line front end of ``studies.adapt`` (``--help`` for the details).
"""

import sys

from studies.adapt import main

if __name__ == "__main__":
    sys.exit(main())
