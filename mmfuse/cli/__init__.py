"""The ``mmfuse`` command line (Typer): the group and its error handling (``app``), the commands
(``commands``, a module per stage), their options (``options``) and what they print for humans
(``render``)."""

from mmfuse.cli.app import app, main

__all__ = ["app", "main"]
