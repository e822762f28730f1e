"""The core: data (validation, sources, snapshots), variants, model, training, instrumentation and claims.

It imports neither Airflow nor MLflow.
"""
