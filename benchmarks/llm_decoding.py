"""Beam search with a Hugging Face decoder: mmfuse's batched search vs ``model.generate(num_beams=5)``.

Both decode the same 64 images with the same model (a language model trained by ``train-lm`` on the
``shapes`` captions, joined by an ``mlp`` connector to the small CNN), from the same context
embeddings, under the settings where the two searches are defined the same (no length
normalisation: mmfuse's GNMT alpha 0, Hugging Face's length_penalty 0; one caption per image; the
same maximum length, and the same minimum: the end token masked for the first ``--min-length`` steps,
mmfuse's ``min_length`` and Hugging Face's ``min_new_tokens``). The minimum makes the work a caption's
length: without it, the untrained connector's random images make the trained host end at once
(2 tokens), and both sides would time their setup alone. The script checks that the captions are
identical, prints their lengths, then captions/s of each and the ratio (target: mmfuse >= 1.5x).

    python benchmarks/llm_decoding.py [--images 64] [--beams 5] [--min-length 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmfuse.config import DecodeConfig, ModelConfig  # noqa: E402
from mmfuse.generate.decoding import beam_search  # noqa: E402
from mmfuse.models.hub import locate  # noqa: E402
from mmfuse.models.lm_captioner import build_lm_captioner  # noqa: E402
from mmfuse.models.parts import resolve_parts  # noqa: E402
from mmfuse.train.language_model import LMTrainSettings, train_language_model  # noqa: E402
from mmfuse.workspace import Workspace  # noqa: E402


def _language_model(root: Path) -> Path:
    from typer.testing import CliRunner

    from mmfuse.cli import app

    res = CliRunner().invoke(app, ["prepare-data", "shapes", "--train-images", "2000", "--val-images", "50",
                                   "--test-images", "64", "-w", str(root)])
    assert res.exit_code == 0, res.stderr
    out = root / "lm"
    train_language_model(Workspace.open(root), "shapes", out, LMTrainSettings(epochs=2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--beams", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=24)
    parser.add_argument("--min-length", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = _language_model(Path(tmp))
        cfg = resolve_parts(ModelConfig(decoder=f"hf:{folder}", fusion="mlp", image_size=64, dropout=0.0), "caption")
        model = build_lm_captioner(cfg, locate(str(folder))).eval()
        images = torch.randn(args.images, 3, 64, 64)
        decode = DecodeConfig(beam_size=args.beams, max_length=args.max_length, min_length=args.min_length)
        eos = model.special.end
        with torch.inference_mode():
            features = model.encode(images)

            def ours() -> list[list[int]]:
                return [n_best[0].tokens for n_best in beam_search(model, features, decode)]

            def theirs() -> list[list[int]]:
                context, _ = model.context(features)
                out = model.lm.hf.generate(inputs_embeds=context, attention_mask=torch.ones(context.shape[:2], dtype=torch.long),
                                           do_sample=False, num_beams=args.beams, length_penalty=0.0, early_stopping=False,
                                           max_new_tokens=args.max_length, min_new_tokens=args.min_length, eos_token_id=eos,
                                           pad_token_id=model.text.tokenizer.pad_token_id)
                return [row[: row.index(eos)] if eos in row else row for row in out.tolist()]

            a, b = ours(), theirs()
            same = sum(x == y for x, y in zip(a, b))
            print(f"identical captions: {same} of {len(a)}; {sum(map(len, a)) / len(a):.1f} tokens per caption "
                  f"(shortest {min(map(len, a))}, longest {max(map(len, a))})")
            times = {}
            for name, fn in (("mmfuse", ours), ("generate", theirs)):
                best = float("inf")
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    fn()
                    best = min(best, time.perf_counter() - start)
                times[name] = best
        rate = {k: args.images / v for k, v in times.items()}
        print(f"{torch.get_num_threads()} threads, {args.images} images, beam {args.beams}, max {args.max_length} tokens, "
              f"{model.lm.width}-wide {type(model.lm.hf).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters")
        for k in times:
            print(f"{k:9s} {times[k]:.3f} s  {rate[k]:.1f} captions/s")
        print(f"ratio mmfuse / generate: {rate['mmfuse'] / rate['generate']:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
