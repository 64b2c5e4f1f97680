"""seqkit's own errors: what the command line reports in one line, without a traceback."""


class DataError(ValueError):
    """Bad input data; the message names the file (and line) and what to do."""
