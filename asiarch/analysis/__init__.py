"""Offline analysis of an experiment: statistics, stages, views, show, lineage, export, report, plots."""
