class DataError(RuntimeError):
    """Input data that is missing, corrupt or of the wrong shape; the message names the file and the problem."""
