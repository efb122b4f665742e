"""Sweeps: the MLflow parent run, pruning inside jobs, best-config lookup and reproduction."""
