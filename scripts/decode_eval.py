#!/usr/bin/env python
"""Decode-time evaluation: bits per token of held-out continuations scored through the decoding
path (the prompt in one incremental call, then token by token), e.g. under SWAA's
``{'decode_full_attention': True}``.

    python scripts/decode_eval.py DATA-BIN --path CKPT --prompt-tokens 512 --continuation-tokens 128

Command-line front end of ``studies.decode_eval`` (``--help`` for the details).
"""

import sys

from studies.decode_eval import main

if __name__ == "__main__":
    sys.exit(main())
