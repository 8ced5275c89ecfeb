"""Study drivers beside the plugin: they import ``fairseq_mswa`` and ``data_prep``, never the
reverse. Each drives fairseq's CLIs and writes its findings under ``results/``."""
