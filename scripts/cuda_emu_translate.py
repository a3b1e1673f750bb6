#!/usr/bin/env python3
"""Rewrites a .cu file into C++ the CUDA emulator compiles (see tests/emu/cuda_emu.h).

Only two constructs have no C++ spelling, so only they change; everything else, line numbers included,
stays as written, so compiler messages and debuggers point at the real source:
  kernel<<<grid, block[, smem[, stream]]>>>(args)  ->  kernel ^ ::emu::Config(grid, block, ...)(args)
  extern __shared__ [__align__(n)] T name[];       ->  T* name = ::emu::dynamic_smem<T>();

Usage: cuda_emu_translate.py IN.cu OUT.cpp
"""
import re
import sys

LAUNCH = re.compile(r"<<<(.*?)>>>(\s*)\(", re.DOTALL)
EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s+)?([\w:]+)\s+(\w+)\s*\[\s*\]\s*;")


def translate(text: str) -> str:
    text = LAUNCH.sub(lambda m: " ^ ::emu::Config(" + m.group(1) + ")" + m.group(2) + "(", text)
    return EXTERN_SHARED.sub(lambda m: f"{m.group(1)}* {m.group(2)} = ::emu::dynamic_smem<{m.group(1)}>();", text)


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, encoding="utf-8") as f:
        text = f.read()
    out = translate(text)
    if "<<<" in out or re.search(r"extern\s+__shared__", out):
        print(f"{src}: a launch or extern __shared__ the translator does not understand", file=sys.stderr)
        return 1
    with open(dst, "w", encoding="utf-8") as f:
        f.write(f'#line 1 "{src}"\n' + out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
