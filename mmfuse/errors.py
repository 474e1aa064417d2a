"""The one error type the command line turns into a single clear line and a non-zero exit."""


class MmfuseError(Exception):
    """A problem with the user's input, files or workspace (not a bug in mmfuse).

    The CLI prints ``mmfuse: error: <message>`` on stderr and exits with ``exit_code``.
    """

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
