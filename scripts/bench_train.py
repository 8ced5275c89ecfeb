#!/usr/bin/env python
"""Training tokens/s on CPU: transformer_xl_mswa (full, swa, mswa) against fairseq's transformer_lm.

    python scripts/bench_train.py --json results/bench/train_cpu.json --md results/bench/train_cpu.md

Command-line front end of ``studies.bench_train`` (``--help`` for the details).
"""

from studies.bench_train import main

if __name__ == "__main__":
    main()
