"""The error every weights / checkpoint reader raises for a file it cannot read safely."""


class CheckpointError(RuntimeError):
    """A weights file that cannot be read safely; the message names the file."""
