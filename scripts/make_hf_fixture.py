#!/usr/bin/env python3
"""Builds tests/fixtures/hf_tiny/: a tiny random GPT-2 saved by Hugging Face transformers, and what
transformers computes with it on one batch. tests/test_hf_weights.cpp loads the model through
model/weights.h (the code bin/train --init uses) and must reproduce these numbers.

Run by hand, never in CI (CI has no torch); only its output is committed:

    pip install torch transformers safetensors numpy
    python3 scripts/make_hf_fixture.py [OUT_DIR]          # default tests/fixtures/hf_tiny

The shapes are chosen to catch mistakes: V=97 is not a multiple of 128 (so our padded rows show up),
T=11 is neither a power of two nor the block size 24, C=24 with NH=3 gives a head size of 8.

OUT_DIR/config.json, model.safetensors (and generation_config.json): from save_pretrained, float32,
    tensor names with the "transformer." prefix, lm_head tied to wte (not stored).
OUT_DIR/reference.safetensors:
    tokens  I32 (B, T)      input tokens
    targets I32 (B, T)      the next token of each position
    logits  F64 (B, T, V)   transformers' logits, model in float64 (eager attention)
    loss    F64 ()          mean cross-entropy over the B*T positions (sum / count)
    grad.<name> F64         d loss / d parameter for every parameter, Hugging Face name without
                            "transformer.", Hugging Face layout (Conv1D weights are (in, out)); wte's
                            gradient includes the tied LM head's share
    f32.logits, f32.loss, f32.grad.<name>  F32: the same computed with the model in float32
  The float64 run uses the float32 weights of model.safetensors widened exactly, so it is the exact
  math of the stored model; the float32 run shows how far transformers' own float32 result is from it.
  Metadata: the versions of torch and transformers, the seed and the shapes.
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from safetensors.numpy import save_file
from transformers import GPT2Config, GPT2LMHeadModel

SEED = 20240611
V, MAXT, L, NH, C = 97, 24, 2, 3, 24
B, T = 2, 11


def randomize(model):
    """Random values for every parameter, far enough from GPT-2's init (unit LayerNorm gains, zero
    biases) that every term of the forward and backward pass matters."""
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("wte.weight"):
                p.copy_(0.3 * noise)  # logits of a few units: a softmax far from uniform
            elif p.dim() == 2:
                p.copy_(0.1 * noise)
            elif ".ln_" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.1 * noise)


def run(model, tokens, targets):
    """Logits, mean loss and {hf name: gradient} for one forward and backward pass."""
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=tokens).logits  # (B, T, V)
    loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), reduction="mean")
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        short = name[len("transformer."):] if name.startswith("transformer.") else name
        grads[short] = p.grad.detach().numpy().copy()
    return logits.detach().numpy(), loss.detach().numpy(), grads


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/hf_tiny"
    torch.manual_seed(SEED)
    config = GPT2Config(vocab_size=V, n_positions=MAXT, n_embd=C, n_layer=L, n_head=NH,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new",
                        layer_norm_epsilon=1e-5, bos_token_id=V - 1, eos_token_id=V - 1)
    model = GPT2LMHeadModel(config)
    randomize(model)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)

    g = torch.Generator().manual_seed(SEED + 1)
    seq = torch.randint(0, V, (B, T + 1), generator=g)
    tokens, targets = seq[:, :T].contiguous(), seq[:, 1:].contiguous()

    ref = {"tokens": tokens.numpy().astype(np.int32), "targets": targets.numpy().astype(np.int32)}
    # Reload what was saved, so the references are computed from the stored weights.
    for dtype, prefix in ((torch.float64, ""), (torch.float32, "f32.")):
        m = GPT2LMHeadModel.from_pretrained(out, torch_dtype=dtype, attn_implementation="eager")
        m.eval()  # dropout is 0 anyway; eval() makes that independent of the config
        logits, loss, grads = run(m, tokens, targets)
        ref[prefix + "logits"] = logits
        ref[prefix + "loss"] = np.asarray(loss)
        for name, gr in grads.items():
            ref[prefix + "grad." + name] = gr
    ref = {k: np.array(v, order="C") for k, v in ref.items()}  # keeps 0-d arrays 0-d
    meta = {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__,
            "seed": str(SEED), "B": str(B), "T": str(T),
            "made_by": "scripts/make_hf_fixture.py"}
    save_file(ref, os.path.join(out, "reference.safetensors"), metadata=meta)
    d64 = np.abs(ref["f32.logits"] - ref["logits"]).max() / np.abs(ref["logits"]).max()
    print(f"wrote {out}: loss {float(ref['loss']):.9f} (float32 run {float(ref['f32.loss']):.9f}), "
          f"float32 vs float64 logits max-abs relative error {d64:.2e}")


if __name__ == "__main__":
    main()
