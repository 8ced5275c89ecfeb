"""fairseq_mswa: Multi-Scale Window Attention language models as a fairseq plugin.

Use the package folder as fairseq's ``--user-dir``; loading it there registers the models
(``transformer_xl_mswa``, ``linear_mswa``), the tasks (``mswa_lm``, ``recall``) and the
criterion ``recall_cross_entropy``.

Where things live:
* ``schedule``   window of head j in layer i (pure Python).
* ``cost``       cost model (linear layers too) and ``python -m fairseq_mswa.cost --table N``.
* ``taylor``     the Taylor feature map's size (shared by the linear-attention kernel and cost).
* ``kernels``    attention kernels and their backends (pure functions).
* ``modules``    positions (relative / rotary), attention layers, norms, feed-forwards.
* ``models``     fairseq models and architecture presets.
* ``tasks``      fairseq tasks (stream LM with memory; associative recall).
* ``criterions`` fairseq criterions (recall accuracy per distance).
"""

__version__ = "0.1.0"

import sys


def register() -> None:
    """Register the plugin with fairseq: its compat patches (fairseq 0.12 under NumPy 2), then
    its criterions, models and tasks (each module registers itself as it is imported).
    Idempotent. fairseq's ``--user-dir`` imports this package after fairseq itself, so the
    package registers on import whenever fairseq is already loaded; code that imports the
    plugin first and fairseq later (a script building a model in-process) calls this."""
    from . import compat, criterions, models, tasks  # noqa: F401


if "fairseq" in sys.modules:  # loaded as fairseq's --user-dir (or after fairseq): register now
    register()
# else: the pure parts (schedule, cost, taylor) import neither torch nor fairseq
