"""``python -m fairseq_mswa.cost --table N``.

The CLI lives in ``__main__`` (not in the package module) because importing the plugin imports
the cost model (the linear-attention kernel takes its feature count from it): running an
already-imported module with ``-m`` would execute it a second time (runpy's RuntimeWarning).
"""

import sys

from . import main

sys.exit(main())
