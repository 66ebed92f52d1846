"""Plots, annotated videos and HTML reports."""
