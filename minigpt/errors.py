"""Errors that mean "the user gave something wrong", not "minigpt has a bug".

The CLI catches ``MinigptError`` and prints its message on one line
(``minigpt: error: ...``) with exit status 2; anything else is a bug and
keeps its traceback.
"""


class MinigptError(Exception):
    """Base class for every user-facing error."""


class ConfigError(MinigptError, ValueError):
    """An impossible model or training configuration."""


class CorpusError(MinigptError, ValueError):
    """A missing, empty, non-UTF-8 or too-short text corpus."""


class TokenizerError(MinigptError, ValueError):
    """Text that the vocabulary cannot encode."""


class CheckpointError(MinigptError, ValueError):
    """A truncated, foreign or inconsistent checkpoint file."""


class TrainingDiverged(MinigptError, FloatingPointError):
    """The loss became NaN or infinite during training."""
