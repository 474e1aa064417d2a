"""The commands, a module per stage: ``data``, ``train``, ``evaluate``, ``generate`` and ``inventory``.
Each declares its commands on an app of its own (:func:`mmfuse.cli.app.command_app`); the group's
table (:data:`mmfuse.cli.app.COMMANDS`) says which module holds each command."""
