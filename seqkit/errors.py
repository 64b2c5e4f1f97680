"""seqkit's own errors: what the command line reports in one line, without a traceback."""


class DataError(ValueError):
    """Bad input data; the message names the file (and line) and what to do."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stays NaN); the message says what to change."""


class ConfigError(ValueError):
    """A setting a model or data module refused; the message names the setting."""
