"""Reporting: run records to tables, comparisons and figures (no torch import)."""
