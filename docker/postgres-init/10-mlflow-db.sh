#!/bin/sh
# Runs once, when the postgres container initializes an empty data volume: creates the MLflow
# backend store as a second database with its own role, next to Airflow's metadata DB.
# The password comes from the container's environment (MLFLOW_DB_PASSWORD, set from .env).
set -eu
: "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD is not set; set it in .env}"
MLFLOW_DB_NAME="${MLFLOW_DB_NAME:-mlflow}"
MLFLOW_DB_USER="${MLFLOW_DB_USER:-mlflow}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v db="$MLFLOW_DB_NAME" -v role="$MLFLOW_DB_USER" -v password="$MLFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"role";
SQL
