"""Data-parallel launchers: how each framework's distributed engine starts its ranks (``launch``)."""
