"""The MLflow edge: run layout, the champion decision and the registry, serving and batch scoring."""
