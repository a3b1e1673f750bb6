#!/usr/bin/env python3
"""GPT-2 124M training throughput in PyTorch: the baseline tune.cu's CUDA backend is measured against.

bf16 autocast over fp32 parameters, fused AdamW, torch.compile, scaled_dot_product_attention (flash), tied
LM head over the padded vocabulary (50304, like tune.cu's Vp), gradient clipping at 1.0, synthetic tokens.
Prints one JSON line: tokens/s (median step after warm-up), step time, peak memory. --json FILE is rewritten
after every timed step (steps_timed says how many), so a run cut short by a timeout still leaves its numbers;
a torch.compile that fails falls back to eager mode (compile: false in the result).

  python3 bench/pytorch_baseline.py --batch 32 --seq 1024 --steps 12 --json out.json

`--device cpu --tiny` runs the same code on a 2-layer model on the CPU: a dry run of the script for a machine
without a GPU (its numbers mean nothing).
"""
import argparse
import json
import math
import os
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=12, help="timed steps after warm-up")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation happens here)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of the script")
    ap.add_argument("--tiny", action="store_true", help="2 layers, 2 heads, 64 channels (with --device cpu)")
    args = ap.parse_args()

    try:
        import torch
        import torch.nn as nn
        import torch.nn.functional as F
    except ImportError as e:
        print(json.dumps({"skipped": f"PyTorch not installed: {e}"}))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"skipped": "PyTorch sees no CUDA GPU"}))
        return 0
    cuda = args.device == "cuda"

    V, VP, MAXT, L, NH, C = 50257, 50304, 1024, 12, 12, 768
    if args.tiny:
        L, NH, C = 2, 2, 64

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(C)
            self.c_attn = nn.Linear(C, 3 * C)
            self.c_proj = nn.Linear(C, C)
            self.ln_2 = nn.LayerNorm(C)
            self.c_fc = nn.Linear(C, 4 * C)
            self.mlp_proj = nn.Linear(4 * C, C)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(VP, C)
            self.wpe = nn.Embedding(MAXT, C)
            self.h = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(C)
            for name, p in self.named_parameters():
                if p.dim() == 2:
                    std = 0.02 / math.sqrt(2 * L) if name.endswith("c_proj.weight") or "mlp_proj" in name else 0.02
                    nn.init.normal_(p, 0.0, std)
                elif name.endswith("bias"):
                    nn.init.zeros_(p)

        def forward(self, idx, targets):
            T = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
            for block in self.h:
                x = block(x)
            logits = F.linear(self.ln_f(x), self.wte.weight)  # tied LM head
            return F.cross_entropy(logits.float().view(-1, VP), targets.view(-1))

    torch.manual_seed(0)
    dev = args.device
    model = GPT().to(dev)
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95), eps=1e-8, fused=cuda)
    step_model = model if args.no_compile else torch.compile(model)
    data = torch.randint(0, V, (args.batch, args.seq + 1), device=dev)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()

    def step():
        with torch.autocast(device_type=dev, dtype=torch.bfloat16):
            loss = step_model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    compiled = not args.no_compile
    t0 = time.perf_counter()
    for i in range(args.warmup):
        try:
            step()
        except Exception as e:  # a compiler that fails here must not cost the measurement: eager instead
            if not compiled or i > 0:
                raise
            print(f"torch.compile failed ({type(e).__name__}: {e}); measuring eager mode", file=sys.stderr)
            compiled, step_model = False, model
            step()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    warmup_s = time.perf_counter() - t0
    print(f"warm-up ({args.warmup} steps{', compilation' if compiled else ''}): {warmup_s:.1f} s", flush=True)
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def report(times, loss):
        """The result so far; written after every timed step, so a run cut by a timeout leaves its numbers."""
        med = statistics.median(times)
        result = {
            "framework": f"pytorch {torch.__version__}",
            "gpu": torch.cuda.get_device_name() if cuda else "none (cpu dry run)",
            "layers": L,
            "batch": args.batch,
            "seq": args.seq,
            "compile": compiled,
            "warmup_s": round(warmup_s, 1),
            "steps_timed": len(times),
            "step_ms": round(med * 1e3, 2),
            "tokens_per_s": round(args.batch * args.seq / med, 1),
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            # the caching allocator's pool
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
            "final_loss": round(float(loss.detach()), 4),
        }
        line = json.dumps(result)
        if args.json:
            with open(args.json + ".tmp", "w") as f:
                f.write(line + "\n")
            os.replace(args.json + ".tmp", args.json)
        return line

    times = []
    line = None
    for _ in range(args.steps):
        t = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t)
        line = report(times, loss)
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
