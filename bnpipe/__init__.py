"""bnpipe: experiments on BatchNormalization-first and other remedies for unstable gradients.

Five rooms, lowest first; a module imports only its own room or the rooms above it in this list
(docs/architecture.md; tests/test_architecture.py checks it):

- ``base``: settings (the one reader of the environment), process lifecycle, Markdown tables;
- ``core``: data (validation, sources, snapshots), variants, model, training, instrumentation,
  claims (neither Airflow nor MLflow);
- ``mlflow_edge``: the MLflow layout, the champion decision and registry, serving and scoring;
- ``reporting``: run summaries, the claims report, plots, the live progress view;
- ``operations``: the CLI, Params, warm trainers, the local stack, the inbox, the table suite.
"""
