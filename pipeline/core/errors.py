"""Errors that end a command with one clear line instead of a traceback."""


class FraudError(Exception):
    """A condition the user can fix; ``str(err)`` is the whole message."""

    exit_code = 1


class MissingModulesError(FraudError):
    pass


class RedisUnavailableError(FraudError):
    """Redis cannot serve us: ``transient`` when waiting may help (down, restarting, loading), not
    when it never will by itself (a refused password, a missing permission)."""

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient
