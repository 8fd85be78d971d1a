"""The fleet command's error for users: printed as one message, never a traceback."""


class FleetError(Exception):
    """A fleet command that cannot run as asked; the message names what and the fix."""
