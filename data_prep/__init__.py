"""Dataset preparation for the MSWA paper's benchmarks (Wikitext-103, enwik8).

Run it through the wrappers ``data_prep/wikitext103.sh`` and ``data_prep/enwik8.sh`` or as
``python -m data_prep.prepare {wikitext103,enwik8} [--archive PATH] [--root data-bin]``.
"""
