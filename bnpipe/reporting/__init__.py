"""Reporting: run summaries read back from MLflow, the claims report, plots, the live progress view."""
