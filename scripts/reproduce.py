#!/usr/bin/env python
"""Train and evaluate the rows of the MSWA paper's Tables 2, 3, 5 and 6 (driver of tableN.sh).

    python scripts/reproduce.py --table 2 --scale cpu

Command-line front end of ``studies.reproduce`` (``--help`` for the details).
"""

import sys

from studies.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
