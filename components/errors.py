"""The one error type users see: its message is the whole story, shown as one line by the CLI."""


class UserError(Exception):
    """Bad input (data, config, CLI, checkpoint): the message names the culprit and the fix."""
