"""Smoke tests of the scripts in ``benchmarks/``, so that they cannot rot."""
