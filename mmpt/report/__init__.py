"""Aggregate finished runs into tables and plots: `python -m mmpt.report <outputs or multirun dir>`."""
from mmpt.report.aggregate import collect, sweep_summary, table

__all__ = ["collect", "table", "sweep_summary"]
