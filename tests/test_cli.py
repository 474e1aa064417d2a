"""The command line end to end on a tiny set, its help, and the config override order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from mmfuse import cli
from mmfuse.config import RunConfig
from tests.conftest import TINY, invoke


def test_pipeline_end_to_end(workspace: Path) -> None:
    """prepare-data -> train -> evaluate -> caption on a tiny set, in well under a minute."""
    assert invoke("prepare-data", "shapes", *TINY).exit_code == 0
    res = invoke("train", "--epochs", "2", "--run", "e2e", "--batch-size", "16", "--hidden-dim", "32", "--feature-dim", "32")
    assert res.exit_code == 0, res.stderr
    run = workspace / "runs" / "e2e"
    assert {"config.json", "vocab.json", "best.safetensors", "last.safetensors", "metrics.jsonl"} <= {p.name for p in run.iterdir()}
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    assert lines[1]["train_loss"] < lines[0]["train_loss"]
    best = [x for x in lines if x["best"]][-1]  # validation scores generated captions, as evaluate does
    res = invoke("evaluate", "--run", "e2e", "--split", "val", "--json", "--no-meteor")
    val = json.loads(res.stdout)["metrics"]
    assert (val["bleu4"], val["cider_d"]) == pytest.approx((best["val_bleu4"], best["val_cider_d"]))
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["hidden_dim"] == 32 and config["model"]["image_size"] == 64

    res = invoke("evaluate", "--run", "e2e", "--json", "--no-meteor")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert set(report["metrics"]) == {"bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider_d"}
    assert report["num_images"] == 8 and len(report["images"]) == 8
    assert all(set(i["scores"]) == set(report["metrics"]) for i in report["images"])
    assert json.loads((run / "eval-test.json").read_text())["metrics"] == report["metrics"]
    results = json.loads((run / "results-test.json").read_text())
    assert [r["caption"] for r in results] == [i["caption"] for i in report["images"]]

    images = sorted((workspace / "datasets/shapes/images/test").glob("*.png"))[:3]
    res = invoke("caption", "-", "--run", "e2e", input="\n".join(map(str, images)) + "\n")
    assert res.exit_code == 0, res.stderr
    rows = [line.split("\t") for line in res.stdout.splitlines()]
    assert [r[0] for r in rows] == [str(p) for p in images]
    by_path = {Path(c["image"]).name: c["caption"] for c in report["images"]}
    assert [r[1] for r in rows] == [by_path[p.name] for p in images]  # same model, same greedy captions

    res = invoke("caption", str(images[0]), "--run", "e2e", "--json", "--beam-size", "3")
    record = json.loads(res.stdout)
    assert record["path"] == str(images[0]) and record["decoding"]["beam_size"] == 3 and isinstance(record["caption"], str)


def test_evaluate_decodes_as_the_run_says_unless_a_flag_overrides(trained: Path) -> None:
    saved = json.loads((trained / "runs" / "r" / "config.json").read_text())["decode"]
    a = json.loads(invoke("evaluate", "-w", str(trained), "--run", "r", "--json", "--split", "val", "--no-meteor").stdout)
    b = json.loads(invoke("evaluate", "-w", str(trained), "--run", "r", "--json", "--split", "val", "--beam-size", "2",
                          "--no-cache", "--no-meteor").stdout)
    assert a["decode"] == saved
    assert b["decode"] == {**saved, "beam_size": 2, "use_cache": False}


def _commands() -> dict[str, typer.main.TyperCommand]:
    """Every command the group lists, as it gives them (each module imported when asked for)."""
    group = typer.main.get_command(cli.app)
    ctx = group.make_context("mmfuse", ["--help"], resilient_parsing=True)
    return {name: group.get_command(ctx, name) for name in group.list_commands(ctx)}  # type: ignore[attr-defined]


def test_each_command_comes_from_the_module_the_table_names() -> None:
    """The command table (mmfuse.cli.app.COMMANDS) and the modules' own commands agree: a command
    declared in a module but missing from the table, or listed under another module, fails here."""
    import importlib

    from mmfuse.cli.app import COMMANDS

    declared = {}
    for module in set(COMMANDS.values()):
        group = typer.main.get_group(importlib.import_module(f"mmfuse.cli.commands.{module}").app)
        declared |= {name: module for name in group.commands}
    assert declared == COMMANDS


def test_a_command_loads_only_its_own_module() -> None:
    code = ("import sys; from typer.testing import CliRunner; from mmfuse.cli import app; "
            "CliRunner().invoke(app, ['list', '--help']); "
            "print(sorted(m for m in sys.modules if m.startswith('mmfuse.cli.commands.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["['mmfuse.cli.commands.inventory']"], done.stderr


def test_every_option_is_documented() -> None:
    commands = _commands()
    assert set(commands) == {"prepare-data", "cache-features", "train", "train-lm", "evaluate", "caption", "ask", "predict",
                             "compare", "list", "show"}
    for name, command in commands.items():
        assert command.help, name
        for param in command.params:
            assert getattr(param, "help", None), f"{name} {param.name} has no help"
        assert invoke(name, "--help").exit_code == 0


def test_help_lists_registry_choices() -> None:
    from mmfuse.data.sources import SOURCES
    from mmfuse.models.decoders import DECODERS
    from mmfuse.models.encoders import IMAGE_ENCODERS
    from mmfuse.models.fusion import FUSIONS
    from mmfuse.models.parts import resolve_parts  # noqa: F401  (every module that registers a part)
    from mmfuse.models.text_encoders import TEXT_ENCODERS
    from mmfuse.registry import CATALOG, declared_names

    registries = {"fusion": FUSIONS, "encoder": IMAGE_ENCODERS, "decoder": DECODERS, "text_encoder": TEXT_ENCODERS,
                  "source": SOURCES}
    assert set(CATALOG) == set(registries)
    for kind, registry in registries.items():  # what help reads from the source is what the registry holds
        assert declared_names(kind) == registry.names(), kind

    for command in ("train", "compare"):
        res = invoke(command, "--help")
        assert all(name in res.stdout for name in FUSIONS), command
        assert "small_cnn" in res.stdout and all(name in res.stdout for name in TEXT_ENCODERS)


def test_top_level_help_does_not_import_torch_or_spacy() -> None:
    code = ("import sys; from typer.testing import CliRunner; from mmfuse.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "heavy = [m for m in ('torch', 'spacy', 'torchvision', 'numpy') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_config_file_is_overridden_by_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """defaults < --config file < command-line flags, as seen by the core."""
    seen: list[RunConfig] = []

    def fake_train(workspace, cfg, on_epoch=None, resume=False):
        seen.append(cfg)
        raise typer.Exit(0)

    monkeypatch.setattr("mmfuse.train.loop.train", fake_train)
    data = Path(os.environ["MMFUSE_WORKSPACE"]) / "datasets" / "shapes"
    data.mkdir(parents=True)
    (data / "manifest.json").write_text("{}")  # train checks its data set exists before torch loads
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"train": {"epochs": 7, "lr": 0.01}, "model": {"hidden_dim": 64}}))
    assert invoke("train", "--config", str(path), "--epochs", "3").exit_code == 0
    cfg = seen[0]
    assert cfg.train.epochs == 3  # flag beats file
    assert cfg.train.lr == 0.01 and cfg.model.hidden_dim == 64  # file beats default
    assert cfg.train.batch_size == RunConfig().train.batch_size  # default stays
