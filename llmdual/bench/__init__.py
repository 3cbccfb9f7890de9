"""Benchmarking: the worker, runner, statistics, results document and report behind ``benchmarks/compare.py``."""
