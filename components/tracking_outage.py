"""How long MLflow calls wait for a tracking server that does not answer, and how to tell that it did not.

MLflow's HTTP client retries a failed request with exponential backoff (urllib3's `Retry`), reading its
settings from environment variables on every request. `http_retry_env` turns one figure, the seconds a caller
is willing to wait, into those settings.
"""
from __future__ import annotations

import contextlib
import os

BACKOFF_MAX_S = 120.0  # urllib3's cap on one backoff sleep
MAX_RETRIES = 10  # MLflow refuses more (_MLFLOW_HTTP_REQUEST_MAX_RETRIES_LIMIT)


def total_backoff_s(retries: int, factor: float) -> float:
    """Seconds urllib3 sleeps across `retries` retries: none before the first, factor·2^(k-1) before the k-th."""
    return sum(min(factor * 2 ** (k - 1), BACKOFF_MAX_S) for k in range(2, retries + 1))


def http_retry_env(patience_s: float) -> dict[str, str]:
    """MLflow HTTP settings under which a request to an unreachable server gives up after about `patience_s`
    seconds (0: at once); each attempt itself times out after at most 30 s."""
    if patience_s <= 0:
        retries, factor = 0, 1.0
    else:
        retries, factor = 1, 1.0
        while total_backoff_s(retries, factor) < patience_s and retries < MAX_RETRIES:
            retries += 1
        while total_backoff_s(retries, factor) < patience_s and factor < BACKOFF_MAX_S:
            factor = min(factor * 1.25, BACKOFF_MAX_S)
    return {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": f"{factor:g}",
            "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(min(30, max(5, patience_s))))}


@contextlib.contextmanager
def patience(seconds: float):
    """MLflow calls inside give up on an unreachable server after about `seconds` (0: one short attempt);
    the process's settings are back in place afterwards."""
    values = http_retry_env(seconds)
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def is_unreachable(err: BaseException) -> bool:
    """Whether `err` says the tracking server could not be reached or answered with a server error (as
    opposed to refusing the request: a bad parameter, a missing run)."""
    import requests

    if isinstance(err, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return True
    from mlflow.exceptions import MlflowException

    if not isinstance(err, MlflowException):
        return False
    return err.error_code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED") or (
        err.error_code == "INTERNAL_ERROR" and str(err.message).startswith("API request to"))
