#!/usr/bin/env python3
"""Rewrites a .cu file into C++ the CUDA emulator compiles (see tests/emu/cuda_emu.h).

Three constructs change; everything else, line numbers included, stays as written, so compiler messages
and debuggers point at the real source:
  kernel<<<grid, block[, smem[, stream]]>>>(args)  ->  kernel ^ ::emu::Config(site, grid, block, ...)(args)
                                                       (site: the launch's file and line, for messages)
  extern __shared__ [__align__(n)] T name[];       ->  T* name = ::emu::dynamic_smem<T>();
  __shared__ T a[N], b[M][K];                      ->  a and b become references to per-block storage that
                                                       holds NaN bytes when the block starts, as unwritten
                                                       shared memory would (::emu::block_shared)

Usage: cuda_emu_translate.py IN.cu OUT.cpp
"""
import re
import sys

LAUNCH = re.compile(r"<<<(.*?)>>>(\s*)\(", re.DOTALL)
EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s+)?([\w:]+)\s+(\w+)\s*\[\s*\]\s*;")


# One line only ([ \t], [^;\n]): a "__shared__" in a comment must not swallow the next line's code.
SHARED = re.compile(r"(?<![\w])__shared__[ \t]+(?:__align__[ \t]*\([ \t]*\d+[ \t]*\)[ \t]+)?([\w:]+)[ \t]+([^;\n]+);")
DECLARATOR = re.compile(r"\s*(\w+)\s*((?:\[[^\]]+\])+)\s*$")


def split_top_level(s: str) -> list:
    parts, depth, cur = [], 0, ""
    for ch in s:
        depth += ch in "([<{"
        depth -= ch in ")]>}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def shared_decl(m: "re.Match") -> str:
    out = []
    for d in split_top_level(m.group(2)):
        dm = DECLARATOR.match(d)
        if not dm:
            raise ValueError(f"__shared__ declarator the translator does not understand: {d.strip()!r}")
        name, dims = dm.group(1), dm.group(2)
        out.append(f"static char emu_key_{name}; auto& {name} = ::emu::block_shared<{m.group(1)} {dims}>(&emu_key_{name});")
    return " ".join(out)


def translate(text: str) -> str:
    site = '::emu::launch_site(__FILE__, __LINE__), '
    text = LAUNCH.sub(lambda m: " ^ ::emu::Config(" + site + m.group(1) + ")" + m.group(2) + "(", text)
    text = EXTERN_SHARED.sub(lambda m: f"{m.group(1)}* {m.group(2)} = ::emu::dynamic_smem<{m.group(1)}>();", text)
    return SHARED.sub(shared_decl, text)


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, encoding="utf-8") as f:
        text = f.read()
    try:
        out = translate(text)
    except ValueError as e:
        print(f"{src}: {e}", file=sys.stderr)
        return 1
    if "<<<" in out or re.search(r"__shared__", out):
        print(f"{src}: a launch or extern __shared__ the translator does not understand", file=sys.stderr)
        return 1
    with open(dst, "w", encoding="utf-8") as f:
        f.write(f'#line 1 "{src}"\n' + out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
