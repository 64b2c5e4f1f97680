"""seqkit's own errors: what the command line reports in one line, without a traceback."""


class DataError(ValueError):
    """Bad input data; the message names the file (and line) and what to do."""


class ConfigError(ValueError):
    """A setting a model or data module refused; the message names the setting."""
