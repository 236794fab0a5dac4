"""Exceptions with sentences meant for users: what was wrong and what to do."""


class OffSegError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(OffSegError, ValueError):
    """A configuration value or key is invalid."""


class CheckpointError(OffSegError):
    """A checkpoint file is missing, corrupt, or belongs to another model."""


class DatasetError(OffSegError):
    """A dataset is missing, inconsistent or unreadable."""


class InputError(OffSegError, ValueError):
    """An input image or tensor cannot be used."""
