"""Command-line options, each declared once.

An option that sets a config field is generated from the field (:func:`mmfuse.config.setting` holds
its help, flag and help section beside the field); :func:`config_options` adds those options to a
command, which receives the values the user gave as ``given``. Options that belong to no config are
declared here once when several commands share them, else in their command.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, TypeVar

import typer
from typer.core import TyperCommand

from mmfuse.cli import render
from mmfuse.config import DecodeConfig, ModelConfig, RunConfig, ShapesConfig, TrainConfig, read_run_config
from mmfuse.errors import MmfuseError
from mmfuse.workspace import Workspace, read_json

F = TypeVar("F", bound=Callable[..., Any])
Given = dict[str, dict[str, Any]]  # config section -> {field: value} for the options given on the command line
SECTIONS: dict[str, type] = {"model": ModelConfig, "train": TrainConfig, "decode": DecodeConfig,
                             "shapes": ShapesConfig}
DECODE_FIELDS = tuple(f.name for f in dataclasses.fields(DecodeConfig))
DECODE = tuple(f"decode.{name}" for name in DECODE_FIELDS)  # the decoding options of the commands that decode
# option (parameter) name -> the registry whose names it takes, listed in --help by HelpCommand
CHOICES: dict[str, str] = {"source": "source", "fusions": "fusion"}
AUTO_CHOICE = ("decoder", "text_encoder")  # registries whose options also take "auto"


class HelpCommand(TyperCommand):
    """A command whose --help lists the names an option takes, read from the registries' source files
    (:func:`mmfuse.registry.declared_names`) so that help imports no model code (nor torch)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        from mmfuse.registry import declared_names

        for param in self.params:
            kind = CHOICES.get(param.name or "")
            if kind and param.help is not None and "Choices:" not in param.help:  # type: ignore[attr-defined]
                names = declared_names(kind) + (["auto"] if kind in AUTO_CHOICE else [])
                param.help = f"{param.help} Choices: {', '.join(names)}."  # type: ignore[attr-defined]
        super().format_help(ctx, formatter)


Workspace_ = Annotated[Optional[Path], typer.Option(
    "--workspace", "-w", help="Workspace directory (default: $MMFUSE_WORKSPACE, else ./workspace).",
    show_default=False)]
Device_ = Annotated[str, typer.Option(help=TrainConfig.__dataclass_fields__["device"].metadata["help"])]
Checkpoint_ = Annotated[str, typer.Option(help="Weights to use: best or last.")]
BatchSize_ = Annotated[int, typer.Option(help="Images per batch.")]
Meteor_ = Annotated[bool, typer.Option(help="Compute METEOR (needs Java and pycocoevalcap; slower).")]
ConfigFile_ = Annotated[Optional[Path], typer.Option(
    help="JSON file with 'model', 'train', 'decode' sections; flags override it.", show_default=False)]


def run_option(help: str) -> Any:
    """The ``--run`` option of the commands that use a trained run (default: the newest run)."""
    return Annotated[Optional[str], typer.Option(
        help=f"{help} (default: the workspace's most recent run, named on stderr).", show_default=False,
        autocompletion=complete_runs)]


def complete_runs(incomplete: str) -> list[str]:
    """Shell completion of run names from the workspace."""
    return [n for n in Workspace.open().run_names() if n.startswith(incomplete)]


def complete_datasets(incomplete: str) -> list[str]:
    """Shell completion of data set names from the workspace."""
    return [n for n in Workspace.open().dataset_names() if n.startswith(incomplete)]


def config_options(*fields: str, default_note: str | None = None) -> Callable[[F], F]:
    """Add the option of each config field ``"section.field"`` to a command.

    The command takes a ``given: Given`` parameter: the fields whose option the user gave. Every such
    option defaults to ``None`` (not given); the help states the config's default, or ``default_note``
    (e.g. "the run's") when the command starts from another config.
    """
    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in signature.parameters.values()
               if p.name != "given"]
        arguments = [p for p in own if any(isinstance(m, typer.models.ArgumentInfo) for m in p.annotation.__metadata__)]
        own = arguments + [_config_parameter(*spec.split("."), default_note) for spec in fields] + \
            [p for p in own if p not in arguments]
        names = [p.name for p in own]
        if len(set(names)) != len(names):
            raise ValueError(f"{command.__name__}: an option is declared twice")

        @functools.wraps(command)
        def wrapper(**values: Any) -> Any:
            given: Given = {}
            for spec in fields:
                section, name = spec.split(".")
                value = values.pop(name)
                if value is not None:
                    given.setdefault(section, {})[name] = value
            return command(**values, given=given)

        wrapper.__signature__ = signature.replace(parameters=own)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in own}
        return wrapper  # type: ignore[return-value]

    return decorate


def _config_parameter(section: str, name: str, default_note: str | None) -> inspect.Parameter:
    item = {f.name: f for f in dataclasses.fields(SECTIONS[section])}[name]
    meta = item.metadata
    if meta.get("flag") is None:
        raise ValueError(f"{section}.{name} is set in config files only")
    decls = [meta["flag"]] if meta["flag"] else []
    kind = bool if item.type in ("bool", "bool | None") else {"int": int, "float": float, "str": str}[item.type]
    note = default_note or _shown_default(item.default)
    help = meta["help"] + (f" (default: {note})" if note and "default:" not in meta["help"] else "")
    if meta["choices"]:
        CHOICES[name] = meta["choices"]
    option = typer.Option(*decls, help=help, show_default=False, rich_help_panel=meta["panel"] or None,
                          autocompletion=_completer(meta["names"], meta["choices"]))
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[Optional[kind], option])  # type: ignore[valid-type]


def _completer(names: str, choices: str) -> Callable[[str], list[str]] | None:
    """Shell completion of a config option: workspace names, or a registry's names."""
    if names:
        return {"runs": complete_runs, "datasets": complete_datasets}[names]
    if choices:
        def complete(incomplete: str) -> list[str]:
            from mmfuse.registry import declared_names

            extra = ["auto"] if choices in AUTO_CHOICE else []
            return [n for n in declared_names(choices) + extra if n.startswith(incomplete)]

        return complete
    return None


def _shown_default(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value in ("", None) else f"{value:g}" if isinstance(value, float) else str(value)


def run_config(path: Optional[Path], given: Given) -> RunConfig:
    """defaults < config file < command-line flags, validated."""
    from mmfuse.config import from_dict, load_config_file, to_dict

    base = to_dict(RunConfig())
    file = load_config_file(path) if path else {}
    unknown = sorted(set(file) - set(base))
    if unknown:
        raise MmfuseError(f"config file {path}: unknown section(s) {', '.join(unknown)}; valid: model, train, decode")
    merged = {**base}
    for section in ("model", "train", "decode"):
        from_file = file.get(section, {})
        if not isinstance(from_file, dict):
            raise MmfuseError(f"config file {path}: section {section!r} must be an object")
        merged[section] = {**base[section], **from_file, **given.get(section, {})}
    cfg = from_dict(RunConfig, merged, f"config file {path}" if path else "config")
    cfg.validate()
    return cfg


def run_name(ws: Workspace, run: str | None) -> str:
    """``run``, or the workspace's most recent run (named on stderr)."""
    if run is not None:
        return run
    latest = ws.latest_run()
    render.note(f"using run {latest!r}, the most recent (choose another with --run; see mmfuse list)")
    return latest


def check_decoding(ws: Workspace, run: str, given: Given) -> None:
    """The run exists and the decoding options given fit its settings (before torch loads)."""
    from mmfuse.data.vocab import Vocab

    files = ws.run(run)
    config = read_run_config(ws.existing_run(run))
    decode = config.decode.override(**given.get("decode", {}))
    if not config.model.decoder.startswith("hf:"):  # a language model's tokenizer is checked once loaded
        decode.check_reachable(len(Vocab.from_json(read_json(files.vocab, "run vocabulary"), str(files.vocab))))
