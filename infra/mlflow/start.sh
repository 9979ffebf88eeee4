#!/usr/bin/env bash
# Start an MLflow tracking server on 127.0.0.1 (never on an external interface by default).
#   infra/mlflow/start.sh [--port 5000] [--backend sqlite:///mlflow-server.db | postgresql+psycopg2://...]
#                          [--artifacts ./mlflow-server-artifacts | s3://bucket/prefix]
#                          [--auth-file FILE | --no-auth]
# Basic auth is on: the admin's credentials come from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, or
# from --auth-file (KEY=VALUE lines with those two keys, mode 600). They reach MLflow through its
# MLFLOW_AUTH_ADMIN_* variables, never through a file this script writes; users without a grant see nothing
# (default_permission NO_PERMISSIONS). --no-auth is for a single-user laptop.
# A PostgreSQL backend names its driver (postgresql+psycopg2://: SQLAlchemy 2.1 would pick psycopg 3 for a bare
# postgresql://); its password belongs in ~/.pgpass or PGPASSWORD, not in the URI.
# Prints the server PID; stop it with `kill <pid>`.
set -euo pipefail
HOST=127.0.0.1
PORT=5000
BACKEND=sqlite:///mlflow-server.db
ARTIFACTS=./mlflow-server-artifacts
AUTH=on
AUTH_FILE=
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) PORT=$2; shift 2 ;;
    --backend) BACKEND=$2; shift 2 ;;
    --artifacts) ARTIFACTS=$2; shift 2 ;;
    --auth-file) AUTH_FILE=$2; shift 2 ;;
    --no-auth) AUTH=off; shift ;;
    --basic-auth) shift ;;  # the default
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
MLFLOW=${MLFLOW:-$(dirname "$0")/../../.venv/bin/mlflow}
APP=()
if [[ $AUTH == on ]]; then
  if [[ -n $AUTH_FILE ]]; then
    [[ -f $AUTH_FILE ]] || { echo "error: --auth-file $AUTH_FILE does not exist" >&2; exit 2; }
    if [[ $(stat -c %a "$AUTH_FILE") != 600 && $(stat -c %a "$AUTH_FILE") != 400 ]]; then
      echo "error: $AUTH_FILE is readable by other users; chmod 600 $AUTH_FILE" >&2; exit 2
    fi
    MLFLOW_TRACKING_USERNAME=$(sed -n 's/^MLFLOW_TRACKING_USERNAME=//p' "$AUTH_FILE")
    MLFLOW_TRACKING_PASSWORD=$(sed -n 's/^MLFLOW_TRACKING_PASSWORD=//p' "$AUTH_FILE")
  fi
  if [[ -z ${MLFLOW_TRACKING_USERNAME:-} || -z ${MLFLOW_TRACKING_PASSWORD:-} ]]; then
    echo "error: auth is on: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or --auth-file FILE);" \
         "on a single-user laptop, --no-auth turns it off" >&2
    exit 2
  fi
  AUTH_DB=${MLFLOW_AUTH_DB:-$(pwd)/mlflow-auth.db}
  AUTH_INI=${AUTH_DB%.db}.ini  # settings only: the credentials are not in it
  printf '[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = sqlite:///%s\n' "$AUTH_DB" > "$AUTH_INI"
  export MLFLOW_AUTH_CONFIG_PATH=$AUTH_INI
  export MLFLOW_AUTH_ADMIN_USERNAME=$MLFLOW_TRACKING_USERNAME MLFLOW_AUTH_ADMIN_PASSWORD=$MLFLOW_TRACKING_PASSWORD
  # CSRF protection signs with this key; every worker of this server inherits the same one. Set it yourself
  # when several servers sit behind one address.
  export MLFLOW_FLASK_SERVER_SECRET_KEY=${MLFLOW_FLASK_SERVER_SECRET_KEY:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}
  APP=(--app-name basic-auth)
else
  echo "note: auth is off (--no-auth): anyone who can reach 127.0.0.1:$PORT can read and change every run" >&2
fi
"$MLFLOW" server --host "$HOST" --port "$PORT" --backend-store-uri "$BACKEND" \
  --artifacts-destination "$ARTIFACTS" --workers 2 "${APP[@]}" > "${MLFLOW_LOG:-mlflow-server.log}" 2>&1 &
echo $!
