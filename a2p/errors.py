"""Errors a2p reports to users: each carries a message that names the file or key and the problem."""


class A2PError(Exception):
    """Base class of every error a2p reports to a user; the CLI prints it and exits with code 2."""


class ConfigError(A2PError):
    """A configuration key, value or preset is wrong."""


class DataError(A2PError):
    """An input file (recording, shard, manifest) is missing, malformed or inconsistent."""
