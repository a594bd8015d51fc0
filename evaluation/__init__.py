"""Benchmarks, sweeps, reports and the ``commit-env`` command line (the top layer)."""
