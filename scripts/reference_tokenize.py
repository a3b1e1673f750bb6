#!/usr/bin/env python3
"""Reference GPT-2 token ids from Hugging Face `tokenizers`, for tests/test_tokenizer.cpp.

usage: scripts/reference_tokenize.py [--vocab DIR] FILE...

Prints one line per FILE, in order: its token ids separated by single spaces, or the single word
INVALID_UTF8 when the file is not valid UTF-8 (`tokenizers` only takes str, so it has no answer).

The tokenizer is built from DIR/encoder.json and DIR/vocab.bpe alone (no network): a byte-level
BPE model, GPT-2's pre-tokenizer (ByteLevel, no prefix space, GPT-2's split pattern) and no added
tokens, so "<|endoftext|>" in the text is ordinary text, as in tune::Tokenizer::encode.
Needs: pip install tokenizers
"""
import argparse
import os
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers


def build(vocab_dir):
    bpe = models.BPE.from_file(os.path.join(vocab_dir, "encoder.json"), os.path.join(vocab_dir, "vocab.bpe"))
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", default="data/gpt2", help="directory with encoder.json and vocab.bpe")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    tok = build(args.vocab)

    texts, valid = [], []
    for path in args.files:
        with open(path, "rb") as f:
            data = f.read()
        try:
            texts.append(data.decode("utf-8"))
            valid.append(True)
        except UnicodeDecodeError:
            texts.append("")
            valid.append(False)
    encodings = tok.encode_batch(texts, add_special_tokens=False)
    out = sys.stdout
    for ok, enc in zip(valid, encodings):
        out.write(" ".join(map(str, enc.ids)) + "\n" if ok else "INVALID_UTF8\n")


if __name__ == "__main__":
    main()
