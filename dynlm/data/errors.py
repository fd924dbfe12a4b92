"""The one exception the data package raises for bad input."""


class DataError(ValueError):
    """Bad or unreachable data. The message names the problem and the fix."""
