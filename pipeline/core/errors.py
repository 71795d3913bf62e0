"""Errors that end a command with one clear line instead of a traceback."""


class FraudError(Exception):
    """A condition the user can fix; ``str(err)`` is the whole message."""

    exit_code = 1


class MissingModulesError(FraudError):
    pass


class RedisUnavailableError(FraudError):
    pass
