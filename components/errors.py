"""The one error type users see: its message is the whole story, shown as one line by the CLI."""
import errno
import os


class UserError(Exception):
    """Bad input (data, config, CLI, checkpoint): the message names the culprit and the fix."""


class RunFailed(Exception):
    """Work that ran and could not produce a result (every trial of a campaign failed, say). Not bad input:
    the CLI shows the message as one line and exits with status 1."""


DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
             errno.EFBIG: "file too large for this file system"}


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an error's message (its type's name if it has none), cut at `limit`."""
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:limit]


def environment_failure(err: BaseException) -> RunFailed | None:
    """A RunFailed with one line for a failure of the machine or a service rather than of the work (the
    tracking or storage server unreachable, a full disk), or None for anything else."""
    from components.storage import redact
    from components.tracking_outage import is_unreachable

    if isinstance(err, OSError) and err.errno in DISK_FULL:
        where = f" writing {err.filename}" if err.filename else ""
        return RunFailed(f"{DISK_FULL[err.errno]}{where}: free space there and rerun the same command (published "
                         "outputs are intact; training resumes from its last checkpoint)")
    if isinstance(err, OSError) and err.errno is None and "AWS Error NETWORK_CONNECTION" in str(err):
        return RunFailed(f"the storage server did not answer ({redact(first_line(err))}); once it is back, rerun "
                         "the same command: an output counts only once its marker is written, so nothing "
                         "half-uploaded is reused")
    if is_unreachable(err):
        uri = redact(os.environ.get("MLFLOW_TRACKING_URI", "the tracking server"))
        return RunFailed(f"the MLflow tracking server {uri} did not answer ({redact(first_line(err))}); start it "
                         "and rerun the same command: finished stages are cached and training resumes from its "
                         "last checkpoint (tracking.patience_s sets how long to wait)")
    return None
