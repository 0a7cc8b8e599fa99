"""One error type for bad input: its message is the single line a user sees."""


class TinyCapError(Exception):
    """Bad input or a failed job. The message names the file (or key) and the reason."""

    def __init__(self, where, reason):
        self.where = str(where)
        self.reason = str(reason)
        super().__init__(f"{self.where}: {self.reason}")
