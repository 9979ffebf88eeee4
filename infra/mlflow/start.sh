#!/usr/bin/env bash
# Start an MLflow tracking server on 127.0.0.1 (never on an external interface by default).
#   infra/mlflow/start.sh [--port 5000] [--backend sqlite:///mlflow-server.db | postgresql://...]
#                          [--artifacts ./mlflow-server-artifacts | s3://bucket/prefix] [--basic-auth]
# Basic auth reads MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD as the admin credentials.
# Prints the server PID; stop it with `kill <pid>`.
set -euo pipefail
HOST=127.0.0.1
PORT=5000
BACKEND=sqlite:///mlflow-server.db
ARTIFACTS=./mlflow-server-artifacts
AUTH=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) PORT=$2; shift 2 ;;
    --backend) BACKEND=$2; shift 2 ;;
    --artifacts) ARTIFACTS=$2; shift 2 ;;
    --basic-auth) AUTH=(--app-name basic-auth); shift ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
MLFLOW=${MLFLOW:-$(dirname "$0")/../../.venv/bin/mlflow}
if [[ ${#AUTH[@]} -gt 0 ]]; then
  : "${MLFLOW_TRACKING_USERNAME:?set MLFLOW_TRACKING_USERNAME for --basic-auth}"
  : "${MLFLOW_TRACKING_PASSWORD:?set MLFLOW_TRACKING_PASSWORD for --basic-auth}"
  AUTH_DB=${MLFLOW_AUTH_DB:-$(pwd)/mlflow-auth.db}
  AUTH_INI=$(mktemp)
  printf '[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///%s\nadmin_username = %s\nadmin_password = %s\n' \
    "$AUTH_DB" "$MLFLOW_TRACKING_USERNAME" "$MLFLOW_TRACKING_PASSWORD" > "$AUTH_INI"
  export MLFLOW_AUTH_CONFIG_PATH=$AUTH_INI
fi
"$MLFLOW" server --host "$HOST" --port "$PORT" --backend-store-uri "$BACKEND" \
  --artifacts-destination "$ARTIFACTS" --workers 2 "${AUTH[@]}" > "${MLFLOW_LOG:-mlflow-server.log}" 2>&1 &
echo $!
