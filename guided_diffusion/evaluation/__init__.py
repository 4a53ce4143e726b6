"""Evaluation: result files, metrics and protocols, tables and figures. Reads result files only."""
