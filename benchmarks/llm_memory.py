"""Peak memory of one training step of an LM captioner (small CNN + mlp connector + a Llama-architecture
language model of about 100M parameters, random weights from a config), in the variants that matter:

- the frozen language model held in fp32 vs bf16 (target: bf16 <= 0.6x of fp32);
- with gradient checkpointing vs without;
- LoRA: the share of parameters that train.

Each variant runs in a fresh process and reports its peak resident memory above what the process
held before building the model (``ru_maxrss``; CPU). On CUDA (``--device cuda``) it reports
``torch.cuda.max_memory_allocated`` instead.

    python benchmarks/llm_memory.py [--width 768] [--layers 12] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = {
    "frozen fp32": [],
    "frozen bf16": ["--frozen-dtype", "bf16"],
    "frozen fp32 + gradient checkpointing": ["--gradient-checkpointing"],
    "lora 16": ["--lora", "16"],
    "lora 16 + gradient checkpointing": ["--lora", "16", "--gradient-checkpointing"],
    "full fine-tuning": ["--finetune-lm"],
    "full fine-tuning + gradient checkpointing": ["--finetune-lm", "--gradient-checkpointing"],
}


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(args: argparse.Namespace) -> None:
    """One training step of one variant; prints a JSON line."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mmfuse.config import ModelConfig
    from mmfuse.models.hub import locate
    from mmfuse.models.lm_captioner import build_lm_captioner
    from mmfuse.models.parts import resolve_parts

    flags = args.flags.split()
    cfg = ModelConfig(decoder=f"hf:{args.model}", fusion="mlp", image_size=64, dropout=0.0,
                      lora=int(flags[flags.index("--lora") + 1]) if "--lora" in flags else 0,
                      finetune_lm="--finetune-lm" in flags, gradient_checkpointing="--gradient-checkpointing" in flags,
                      frozen_dtype="bf16" if "--frozen-dtype" in flags else "fp32")
    device = torch.device(args.device)
    torch.manual_seed(0)
    base = _peak_bytes()
    model = build_lm_captioner(resolve_parts(cfg, "caption"), locate(args.model)).to(device).train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tokens = torch.randint(4, 30, (args.batch, args.tokens), device=device)
    images = torch.randn(args.batch, 3, 64, 64, device=device)
    logits = model(images, tokens, torch.arange(args.batch, device=device))
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), tokens.reshape(-1))
    loss.backward()
    optimizer.step()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_bytes() - base
    print(json.dumps({"peak_bytes": peak, "trainable": trainable, "total": total}))


def _model(folder: Path, width: int, layers: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mmfuse.train.language_model import word_tokenizer

    tokenizer = word_tokenizer(["a red circle above a blue square ."])
    config = LlamaConfig(vocab_size=32000, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                         num_attention_heads=width // 64, num_key_value_heads=width // 64, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="", help=argparse.SUPPRESS)
    parser.add_argument("--flags", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = _model(Path(tmp) / "lm", args.width, args.layers)
        results = {}
        for name, flags in VARIANTS.items():
            cmd = [sys.executable, __file__, "--child", "--model", str(folder), "--batch", str(args.batch),
                   "--tokens", str(args.tokens), "--device", args.device, f"--flags={' '.join(flags)}"]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            results[name] = json.loads(out)
    total = results["frozen fp32"]["total"]
    print(f"Llama {args.width} wide, {args.layers} layers ({total / 1e6:.1f}M parameters with the connector and CNN), "
          f"batch {args.batch} x {args.tokens} caption tokens + 64 image tokens, {args.device}")
    print(f"{'variant':44s} {'peak MiB':>9s} {'vs frozen fp32':>15s} {'trainable':>12s}")
    ref = results["frozen fp32"]["peak_bytes"]
    for name, r in results.items():
        print(f"{name:44s} {r['peak_bytes'] / 2**20:9.0f} {r['peak_bytes'] / ref:14.2f}x "
              f"{100 * r['trainable'] / r['total']:11.2f}%")
    print(f"bf16 / fp32 (frozen): {results['frozen bf16']['peak_bytes'] / ref:.2f}x (target <= 0.6x)")


if __name__ == "__main__":
    main()
