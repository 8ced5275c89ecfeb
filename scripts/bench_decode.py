#!/usr/bin/env python
"""Decode speed and KV-cache bytes of full attention, SWA and MSWA (the MSWA paper's Fig. 3 analogue).

    python scripts/bench_decode.py --json results/bench/decode_cpu.json --md results/bench/decode_cpu.md

Command-line front end of ``studies.bench_decode`` (``--help`` for the details).
"""

from studies.bench_decode import main

if __name__ == "__main__":
    main()
