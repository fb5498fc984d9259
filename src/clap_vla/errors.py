"""Exception types. Every message names the file, episode, key or value at fault."""


class ClapError(Exception):
    """Base class for errors the user can act on (bad input, mismatched artifacts)."""


class DatasetError(ClapError):
    """A dataset on disk is missing, malformed or inconsistent with its metadata."""


class ConfigError(ClapError, ValueError):
    """A configuration field holds an invalid value."""


def holdout_hint(holdout_every: int) -> str:
    """What to do when a dataset has too few episodes for the held-out split (every n-th episode)."""
    return (
        f"With fewer than {holdout_every} episodes, pass --holdout-every N with 2 <= N <= the number of "
        "episodes (every N-th episode is held out for evaluation), or record more episodes."
    )
