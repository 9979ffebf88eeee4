# The MLflow server of docker-compose.yaml: the stock image plus what its backends need (psycopg2 for
# PostgreSQL, boto3 for S3, Flask-WTF for basic auth), and an auth config that holds no credential.
FROM ghcr.io/mlflow/mlflow:v3.17.2
RUN pip install --no-cache-dir psycopg2-binary boto3 flask-wtf
RUN mkdir -p /app && printf '[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = sqlite:////app/auth/mlflow-auth.db\n' \
    > /app/basic_auth.ini && mkdir -p /app/auth
