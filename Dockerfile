# bnpipe's image for the compose stack: every Airflow component, the Celery workers and the MLflow
# server run from it. Based on the official Airflow image; the versions come from pyproject.toml,
# the one place where they are pinned (it pins apache-airflow itself, so pip cannot move Airflow).
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_IMAGE}

# The Fashion-MNIST data set, from Debian (read from /usr/share/datasets/fashion-mnist).
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /opt/airflow/bnpipe /opt/airflow/auth /opt/mlflow/artifacts \
    && chown -R airflow:root /opt/airflow/bnpipe /opt/airflow/auth /opt/mlflow

USER airflow
# The package and its pinned dependencies (not editable: the image holds a copy of the code).
COPY --chown=airflow:root pyproject.toml README.md /opt/bnpipe/
COPY --chown=airflow:root bnpipe /opt/bnpipe/bnpipe
RUN pip install --no-cache-dir /opt/bnpipe

COPY --chown=airflow:root dags /opt/airflow/dags
COPY --chown=airflow:root plugins /opt/airflow/plugins
