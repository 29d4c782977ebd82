"""The one error class of the config layer (its own module: the loader and the bounded YAML
reader both raise it, and the reader sits below the loader)."""


class ConfigError(ValueError):
    """A configuration problem, with the key and the file (or ``--set``) it came from."""
