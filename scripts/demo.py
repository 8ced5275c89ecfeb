#!/usr/bin/env python
"""Offline demo: SWA against MSWA (same base window) on text that ships with Python.

    python scripts/demo.py            # ~10 minutes on 2 CPU cores

Command-line front end of ``studies.demo`` (``--help`` for the details).
"""

import sys

from studies.demo import main

if __name__ == "__main__":
    sys.exit(main())
