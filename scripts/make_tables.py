#!/usr/bin/env python
"""Render Tables 2, 3, 5 and 6 as Markdown, our numbers next to the paper's, plus PNG plots.

    python scripts/make_tables.py --scale cpu

Command-line front end of ``studies.make_tables`` (``--help`` for the details).
"""

import sys

from studies.make_tables import main

if __name__ == "__main__":
    sys.exit(main())
