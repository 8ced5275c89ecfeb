"""fairseq_mswa: Multi-Scale Window Attention language models as a fairseq plugin.

Use the package folder as fairseq's ``--user-dir``; importing it registers the models
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

try:
    import fairseq  # noqa: F401
except ImportError:  # pure-Python parts (schedule, cost) stay usable without fairseq
    fairseq = None

if fairseq is not None:
    from . import compat  # noqa: F401,E402  (fairseq 0.12 under NumPy 2)
    from . import criterions, models, tasks  # noqa: F401,E402
