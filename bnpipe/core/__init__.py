"""The core: data, variants, model, training, instrumentation and claims. It imports neither Airflow nor MLflow."""
