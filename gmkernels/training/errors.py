"""The one exception of the training machinery for a user's mistake (a name, a path, a checkpoint)."""


class TrainingError(Exception):
    """Bad input to ``gmk train`` / ``gmk sample``: the command prints the message on one line and
    exits with status 2. Programming errors raise their usual exceptions."""
