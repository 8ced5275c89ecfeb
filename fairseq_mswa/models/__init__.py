"""Models of the plugin; every module in this folder is imported so it registers itself."""

import importlib
import os

from .. import compat  # noqa: F401  (fairseq 0.12 under NumPy 2, before any fairseq use)

for _file in sorted(os.listdir(os.path.dirname(__file__))):
    if _file.endswith(".py") and not _file.startswith("_"):
        importlib.import_module(__name__ + "." + _file[:-3])
