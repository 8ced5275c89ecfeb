#!/usr/bin/env python
"""Forward+backward time of the attention op over a 12-layer, 8-head schedule: full, SWA, MSWA.

    python scripts/bench_attention.py --json results/bench/attention_cpu.json --md results/bench/attention_cpu.md

Command-line front end of ``studies.bench_attention`` (``--help`` for the details).
"""

from studies.bench_attention import main

if __name__ == "__main__":
    main()
