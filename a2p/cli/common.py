"""Helpers every command shares: logging set-up and turning user errors into exit codes."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable

from a2p.errors import A2PError

EXIT_USER_ERROR = 2


def setup_logging(verbose: bool = False, rank: int = 0) -> None:
    """Plain stdlib logging on stderr; ranks other than 0 only report warnings and errors."""
    level = logging.DEBUG if verbose else logging.INFO
    if rank != 0:
        level = logging.WARNING
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True
    )


def reports_errors(fn: Callable[..., int]) -> Callable[..., int]:
    """Wrap a command's `main` so an `A2PError` prints `error: ...` and exits with code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> int:
        try:
            return fn(*args, **kwargs)
        except A2PError as err:
            logging.getLogger("a2p").debug("user error", exc_info=True)
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USER_ERROR

    return wrapper
