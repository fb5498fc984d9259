"""Exception types. Every message names the file, episode, key or value at fault."""


class ClapError(Exception):
    """Base class for errors the user can act on (bad input, mismatched artifacts)."""


class DatasetError(ClapError):
    """A dataset on disk is missing, malformed or inconsistent with its metadata."""


class ConfigError(ClapError, ValueError):
    """A configuration field holds an invalid value."""
