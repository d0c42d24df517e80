"""Aggregate finished runs into tables and plots: `python -m mmpt.report <outputs or multirun dir>`.

runs.py reads runs and their config identity, stats.py groups them (CIs, paired tests),
tables.py / plots.py write report.{md,csv,png} and learning_curves.png, heatmap.py draws a
skills method's routing heatmap at the end of a run.
"""
