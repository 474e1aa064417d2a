"""The one error type the command line turns into a single clear line and a non-zero exit, and the
line it prints for a file-system error."""

import errno


class MmfuseError(Exception):
    """A problem with the user's input, files or workspace (not a bug in mmfuse).

    The CLI prints ``mmfuse: error: <message>`` on stderr and exits with ``exit_code``.
    """

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


# What to do about the file-system errors a user can fix (errno -> advice).
_OS_ADVICE = {
    errno.ENOSPC: "free some disk space, or use a workspace on another disk (--workspace)",
    errno.EDQUOT: "your disk quota is used up: free some space, or use a workspace on another disk (--workspace)",
    errno.EFBIG: "the file is larger than this system lets a process write (see `ulimit -f`)",
    errno.EROFS: "the file system is read-only: use a writable workspace (--workspace)",
    errno.EACCES: "no permission: use a workspace you can write to (--workspace), or fix its permissions",
    errno.EPERM: "not permitted: use a workspace you can write to (--workspace), or fix its permissions",
}


def describe_os_error(exc: OSError) -> str:
    """One line for a file-system error (disk full, read-only, no permission, ...): what failed,
    on which file when the system said, and what to do about it."""
    what = exc.strerror or str(exc)
    where = f": {exc.filename}" if exc.filename else ""
    advice = _OS_ADVICE.get(exc.errno or 0)
    return f"{what}{where}{f' ({advice})' if advice else ''}"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries' messages can run to many lines), or its
    type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that every clean-up on the way out runs."""


class Interrupted(MmfuseError):
    """A command stopped by Ctrl-C (exit 130) or SIGTERM (exit 143), saying what was kept and how to
    go on."""

    def __init__(self, message: str, signal_exc: BaseException | None = None):
        super().__init__(message, exit_code=143 if isinstance(signal_exc, Terminated) else 130)
