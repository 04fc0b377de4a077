"""Errors a user can act on: each message names the offending file/sample and the fix."""


class KarmmaError(Exception):
    """Base class of every error karmma raises on bad input."""


class ConfigError(KarmmaError, ValueError):
    """A config file or value is invalid (unknown key, wrong type, out of range)."""


class DataError(KarmmaError, ValueError):
    """A data file or sample is missing, corrupt or mis-shaped."""


class CheckpointError(KarmmaError, ValueError):
    """A checkpoint is missing, corrupt, or of another architecture."""


class RunMismatchError(CheckpointError):
    """A run folder holds a run started with another config or data: resuming would mix the two."""


class Interrupted(KarmmaError):
    """The user stopped a run (Ctrl-C); the message says where and how to resume."""

    exit_code = 130
