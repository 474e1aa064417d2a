"""The ``mmfuse`` command line. Each command parses options, builds a typed config and calls ONE
core function. Heavy libraries (torch, spaCy) are imported inside commands, so ``--help`` is fast.

Errors: an :class:`~mmfuse.errors.MmfuseError`, a usage error or a file-system error (``OSError``:
disk full, read-only, ...) becomes one line on stderr and a non-zero exit; anything else is
reported as an internal error (``--debug`` shows the traceback).
"""

from __future__ import annotations

import atexit
import importlib
import os
import signal
import sys
import threading
import warnings
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

try:  # Typer >= 0.20 vendors click as typer._click; older Typer uses the click package
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors

from mmfuse import __version__
from mmfuse.errors import Interrupted, MmfuseError, Terminated, describe_os_error

# command -> its module in mmfuse.cli.commands, in the order --help lists them. A command's module is
# imported when the command runs (--help imports them all), so a command builds its own options alone:
# declaring all eleven commands' 250 options took 12 ms of every start and Typer converting them 17 ms
# (a twentieth of scoring 8,092 images with `evaluate --predictions`).
COMMANDS = {
    "prepare-data": "data",
    "cache-features": "data",
    "train": "train",
    "train-lm": "train",
    "evaluate": "evaluate",
    "caption": "generate",
    "ask": "generate",
    "predict": "generate",
    "compare": "train",
    "list": "inventory",
    "show": "inventory",
}
_DEBUG = {"on": False}  # set per invocation by --debug or $MMFUSE_DEBUG
_TEARDOWN = {"skip": False}  # set by a command that leaves nothing for the interpreter's teardown


def _fail(message: str, code: int) -> None:
    typer.echo(f"mmfuse: error: {message}", err=True)
    sys.exit(code)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # type: ignore[no-untyped-def]
    """A library's warning as one ``mmfuse: warning:`` line on stderr (the source line and the
    warning's file are for --debug)."""
    if _DEBUG["on"]:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
        return
    text = " ".join(str(message).split())
    sys.stderr.write(f"mmfuse: warning: {text[:300]}\n")


class MmfuseGroup(TyperGroup):
    """Turns every expected failure into one clear stderr line and an exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        _DEBUG["on"] = bool(os.environ.get("MMFUSE_DEBUG"))
        _TEARDOWN["skip"] = False  # per invocation: only the command that runs now may set it
        warnings.showwarning = _one_line_warning
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _terminate)
        try:
            rv = super().main(args, prog_name or "mmfuse", complete_var, standalone_mode=False, **extra)
        except click_errors.UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
                text = exc.ctx.get_help()  # rich help prints itself and returns ""
                if text:
                    typer.echo(text)
                sys.exit(2)
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            _fail(f"{exc.format_message()}{where}", exc.exit_code)
        except click_errors.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except typer.Abort:
            _fail("aborted", 130)
        except MmfuseError as exc:
            if _DEBUG["on"]:
                raise
            _fail(str(exc), exc.exit_code)
        except OSError as exc:  # the file system refused (disk full, read-only, no permission, ...)
            if _DEBUG["on"]:
                raise
            _fail(describe_os_error(exc), 1)
        except Exception as exc:  # a bug: say so in one line unless debugging
            if _DEBUG["on"]:
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 1)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv

    def list_commands(self, ctx):  # type: ignore[no-untyped-def]
        return list(COMMANDS)

    def get_command(self, ctx, name):  # type: ignore[no-untyped-def]
        """The command ``name``, its module (:mod:`mmfuse.cli.commands`) imported when first asked for."""
        if name not in self.commands and name in COMMANDS:
            module = importlib.import_module(f"mmfuse.cli.commands.{COMMANDS[name]}")
            self.commands.update(typer.main.get_group(module.app).commands)
        return self.commands.get(name)

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        """Run the command; Ctrl-C or SIGTERM that the command did not report itself (with what it
        kept and how to go on) becomes one line here, before click's own handling prints anything."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            command = ctx.invoked_subcommand or "mmfuse"
            raise Interrupted(f"{command} interrupted; nothing was left half-written", exc) from None


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


HELP = """Multimodal (image + text) fusion: prepare data, train, evaluate and caption.

\b
Start:  mmfuse prepare-data shapes; mmfuse train --data shapes --run demo
Photos: mmfuse prepare-data folder --images DIR --captions FILE.csv
"""

app = typer.Typer(
    cls=MmfuseGroup,
    name="mmfuse",
    help=HELP,
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,  # click's plain help: wraps to the terminal, never cut, and needs no rich import
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def command_app() -> typer.Typer:
    """The Typer app that a module of :mod:`mmfuse.cli.commands` declares its commands on; the group
    takes them from it."""
    return typer.Typer(rich_markup_mode=None, pretty_exceptions_enable=False, add_completion=False)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mmfuse {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Every artifact lives in one workspace: --workspace, else $MMFUSE_WORKSPACE, else ./workspace."""
    _DEBUG["on"] = _DEBUG["on"] or debug


def skip_teardown() -> None:
    """Say that this command holds nothing that needs the interpreter's teardown (no open file it has
    not closed, no thread but a daemon one waiting for a child that has done its work and is exiting
    (:mod:`mmfuse.beside`), no torch): :func:`main` then ends the process once the
    exit handlers have run and stdout and stderr are flushed, without freeing every object and module
    one by one. Measured on ``evaluate --predictions`` with 8,092 images: the teardown took 35-50 ms
    (numpy, Typer and rich alone 28 ms) of a 0.7 s command, and exiting this way 3 ms. Only the
    console script does it; ``app`` called in-process (tests) is unaffected."""
    _TEARDOWN["skip"] = True


def no_blas_threads() -> None:
    """Ask numpy's BLAS (OpenBLAS, in numpy's wheels) for no thread pool, unless
    ``$OPENBLAS_NUM_THREADS`` says otherwise: for a command that multiplies no matrices, called before
    numpy loads. The pool's threads start when numpy loads and spin a while waiting for work: on the
    2-core machine, loading numpy took 55-61 ms instead of 67-84, and ``evaluate --predictions`` on
    8,092 images used 110 ms less CPU (medians of 25 alternating runs). The setting goes to this
    process's children too (METEOR's Java ignores it)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except SystemExit as done:
        if _TEARDOWN["skip"]:
            _exit_now(done.code)
        raise


def _exit_now(code: object) -> None:
    """``sys.exit(code)`` without the interpreter's teardown: the exit handlers run, the output is
    flushed, then the process ends."""
    if code is not None and not isinstance(code, int):  # sys.exit("message") prints it and exits 1
        sys.stderr.write(f"{code}\n")
        code = 1
    atexit._run_exitfuncs()  # what the interpreter's own exit runs first (logging, weakref.finalize ...)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (| head) or stream: what is left cannot be written
            pass
    os._exit(code or 0)
