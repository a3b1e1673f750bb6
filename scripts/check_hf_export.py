#!/usr/bin/env python3
"""Checks that Hugging Face transformers loads a directory written by tune.cu's export_hf (bin/export --hf)
and computes the same logits tune.cu did. Driven by tests/test_hf_weights.cpp (HfExportPython), which
skips when torch or transformers is missing; needs `pip install torch transformers safetensors numpy`.

  check_hf_export.py DIR
      DIR/config.json, DIR/model.safetensors   the export
      DIR/expected.safetensors                 tokens I32 (B, T) and logits F32 (B, T, V) from tune.cu

Loads GPT2LMHeadModel.from_pretrained(DIR) and requires: no missing, unexpected or mismatched tensors,
the LM head tied to wte, and logits within 1e-4 of tune.cu's (max |difference| / max |tune.cu's|).
Exit 0: all hold; 1: one does not (printed); 3: a package is missing.
"""
import sys

try:
    import numpy as np
    import torch
    from safetensors.numpy import load_file
    from transformers import GPT2LMHeadModel
except ImportError as e:  # pragma: no cover - the C++ test skips before this
    print(f"check_hf_export.py: {e}; pip install torch transformers safetensors numpy", file=sys.stderr)
    sys.exit(3)

TOL = 1e-4


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    d = sys.argv[1]
    model, info = GPT2LMHeadModel.from_pretrained(d, output_loading_info=True, attn_implementation="eager")
    model = model.float().eval()
    ok = True
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        if info.get(kind):
            print(f"from_pretrained reported {kind}: {info[kind]}")
            ok = False
    if model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr():
        print("the LM head is not tied to wte")
        ok = False
    want = load_file(f"{d}/expected.safetensors")
    with torch.no_grad():
        got = model(input_ids=torch.from_numpy(want["tokens"].astype(np.int64))).logits.numpy()
    if got.shape != want["logits"].shape:
        print(f"logits shape {got.shape}, tune.cu's {want['logits'].shape}")
        return 1
    err = np.abs(got - want["logits"]).max() / np.abs(want["logits"]).max()
    print(f"logits: max |transformers - tune.cu| / max |tune.cu| = {err:.3e} (tolerance {TOL})")
    if not err <= TOL:
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
