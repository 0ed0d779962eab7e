"""Maintenance tools (not part of the library's API): ``python -m taskbalance.tools.<name>``."""
