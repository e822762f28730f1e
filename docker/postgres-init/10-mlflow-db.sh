#!/bin/sh
# Runs once, when the postgres container initializes an empty data volume: creates the MLflow
# backend store as a second database with its own role, next to Airflow's metadata DB, and a third
# database, owned by the same role, for the users and grants of MLflow's basic-auth app
# (docker/mlflow/basic_auth.ini names it). The password comes from the container's environment
# (MLFLOW_DB_PASSWORD, set from .env).
#
# A data volume initialized before the auth database existed needs it created once by hand:
#   docker compose exec postgres createdb -U airflow -O mlflow mlflow_auth
set -eu
: "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD is not set; set it in .env}"
MLFLOW_DB_NAME="${MLFLOW_DB_NAME:-mlflow}"
MLFLOW_AUTH_DB_NAME="${MLFLOW_AUTH_DB_NAME:-mlflow_auth}"
MLFLOW_DB_USER="${MLFLOW_DB_USER:-mlflow}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v db="$MLFLOW_DB_NAME" -v auth_db="$MLFLOW_AUTH_DB_NAME" -v role="$MLFLOW_DB_USER" \
  -v password="$MLFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"role";
CREATE DATABASE :"auth_db" OWNER :"role";
SQL
