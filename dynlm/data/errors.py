"""The one exception the data package raises for bad input."""
from ..config import DynlmError


class DataError(DynlmError, ValueError):
    """Bad or unreachable data. The message names the problem and the fix."""
