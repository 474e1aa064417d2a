"""The ``mmfuse`` command line (Typer): the group and its error handling (``app``), the commands
(``commands``), their options (``options``) and what they print for humans (``render``)."""

from mmfuse.cli import commands  # noqa: F401  (registers the commands on the app)
from mmfuse.cli.app import app, main

__all__ = ["app", "main"]
