"""The studies' drivers (benchmarks, table reproduction, adaptation, demo) behind the thin
command-line front ends in ``scripts/``; importing this package loads nothing."""
