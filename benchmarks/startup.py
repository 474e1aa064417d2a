"""How fast mmfuse answers, in fresh processes (as a user meets it), side by side in one run:

1. ``mmfuse --help`` and ``mmfuse COMMAND --help`` for every command (target: < 0.5 s each);
2. an error that needs no model (``caption`` of a missing file, an unknown run): it must come
   before torch is imported;
3. ``mmfuse caption IMAGE`` from the start of the process to its first line on stdout, beside
   ``python -c "import torch"`` alone (what the imports cost) and the whole command.

Each figure is the median of ``--repeat`` runs. A tiny captioner is trained first on a small
``shapes`` set in a temporary workspace (about 15 s).

    python benchmarks/startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = ["prepare-data", "cache-features", "train", "evaluate", "caption", "predict", "compare", "list", "show"]


def seconds(args: list[str], env: dict[str, str], until_first_line: bool = False) -> float:
    """Wall time of ``args`` in a new process: to its exit, or to its first line on stdout."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    if until_first_line:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        elapsed = time.perf_counter() - start
        proc.communicate()
        if not line:
            raise SystemExit(f"{' '.join(args[2:4])} printed nothing")
        return elapsed
    proc.communicate()
    return time.perf_counter() - start


def median(args: list[str], env: dict[str, str], repeat: int, **kwargs: bool) -> float:
    return statistics.median(seconds(args, env, **kwargs) for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    opts = parser.parse_args()
    mmfuse = [sys.executable, "-m", "mmfuse"]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MMFUSE_WORKSPACE": str(Path(tmp) / "ws")}
        small = ["--train-images", "64", "--val-images", "8", "--test-images", "8"]
        subprocess.run([*mmfuse, "prepare-data", "shapes", "--name", "tiny", *small], env=env, check=True,
                       capture_output=True)
        subprocess.run([*mmfuse, "train", "--data", "tiny", "--run", "r", "--epochs", "1"], env=env, check=True,
                       capture_output=True)
        image = sorted((Path(tmp) / "ws" / "datasets" / "tiny" / "images" / "test").glob("*.png"))[0]

        print(f"median of {opts.repeat} fresh processes each, {os.cpu_count()} CPUs")
        for command in [None, *COMMANDS]:
            args = [*mmfuse, "--help"] if command is None else [*mmfuse, command, "--help"]
            label = "mmfuse --help" if command is None else f"mmfuse {command} --help"
            print(f"  {label:<32} {median(args, env, opts.repeat):.3f} s")
        print(f"  {'caption missing.png (error)':<32} {median([*mmfuse, 'caption', 'missing.png'], env, opts.repeat):.3f} s")
        print(f"  {'caption x.png --run nope (error)':<32} "
              f"{median([*mmfuse, 'caption', 'x.png', '--run', 'nope'], env, opts.repeat):.3f} s")
        torch_alone = median([sys.executable, "-c", "import torch"], env, opts.repeat)
        first = median([*mmfuse, "caption", str(image), "--run", "r"], env, opts.repeat, until_first_line=True)
        whole = median([*mmfuse, "caption", str(image), "--run", "r"], env, opts.repeat)
        label = 'python -c "import torch"'
        print(f"  {label:<32} {torch_alone:.3f} s")
        print(f"  {'caption IMAGE: first line':<32} {first:.3f} s")
        print(f"  {'caption IMAGE: whole command':<32} {whole:.3f} s")


if __name__ == "__main__":
    main()
