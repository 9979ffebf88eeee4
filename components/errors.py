"""The one error type users see: its message is the whole story, shown as one line by the CLI."""


class UserError(Exception):
    """Bad input (data, config, CLI, checkpoint): the message names the culprit and the fix."""


class RunFailed(Exception):
    """Work that ran and could not produce a result (every trial of a campaign failed, say). Not bad input:
    the CLI shows the message as one line and exits with status 1."""
