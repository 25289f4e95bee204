"""Evaluation: labelled datasets, linear AU probe, per-AU F1, identity leakage, reports."""
