"""User-facing errors: the CLI prints their message on one line and exits non-zero."""


class RootzoneError(Exception):
    """An input problem the user can fix (bad path, bad config value, bad data)."""


class ConfigError(RootzoneError):
    """An invalid configuration value; the message names the field."""


class StoreError(RootzoneError):
    """A store that is missing, unreadable or does not follow the rootzone schema."""


class InputDataError(RootzoneError):
    """Input data that cannot become a store: missing, malformed or physically impossible."""
