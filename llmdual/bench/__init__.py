"""Benchmarking: ``command`` (the one entry point), the typed settings, the runner and its worker, the workloads,
the engines (``engines/``) and the results and their report (``report/``)."""
