#!/usr/bin/env python3
"""Interop check between our safetensors reader/writer (data/safetensors.cpp) and the official
`safetensors` package. Driven by tests/test_safetensors.cpp; needs `pip install safetensors numpy`.

  safetensors_interop.py write DIR        writes files with the official package, plus the expected
                                          contents in a plain form the C++ test reads:
      DIR/official.safetensors            safetensors.numpy.save_file, many dtypes, metadata
      DIR/official_bf16.safetensors       safetensors.serialize_file (numpy has no bfloat16)
      DIR/<file>.manifest                 lines "tensor NAME DTYPE NDIM D0 D1 ..." and "meta KEY VALUE"
      DIR/<file>.<NAME>.bytes             the tensor's raw little-endian bytes, C order
      DIR/<file>.<NAME>.f32               float tensors only: the values as float32, as numpy converts them
  safetensors_interop.py check DIR FILE   loads DIR/FILE.safetensors (written by our C++ writer) with the
                                          official package and compares it with DIR/FILE.manifest and the
                                          .bytes files beside it. Exit 0: all match; 1: a mismatch (printed).

Exit status 3 means the package is missing; the C++ test checks for it before calling, so this only
guards against running the script by hand.
"""
import os
import sys

try:
    import numpy as np
    import safetensors
    from safetensors.numpy import load_file, save_file
except ImportError as e:  # pragma: no cover - the C++ test skips before this
    print(f"safetensors_interop.py: {e}; pip install safetensors numpy", file=sys.stderr)
    sys.exit(3)

NUMPY_OF = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16,
    "U32": np.uint32, "I32": np.int32, "U64": np.uint64, "I64": np.int64,
    "F16": np.float16, "F32": np.float32, "F64": np.float64,
}
HEADER_OF = {np.dtype(v).str: k for k, v in NUMPY_OF.items()}
# The lower-case names the raw serialize API takes.
RAW_NAME_OF = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}


def header_dtype(a):
    return HEADER_OF[a.dtype.str]


def dump(d, file, tensors, metadata):
    """tensors: name -> (header dtype, shape, raw bytes, float32 values or None)."""
    with open(os.path.join(d, file + ".manifest"), "w") as m:
        for name, (dtype, shape, raw, f32) in tensors.items():
            m.write(" ".join(["tensor", name, dtype, str(len(shape))] + [str(s) for s in shape]) + "\n")
            with open(os.path.join(d, f"{file}.{name}.bytes"), "wb") as f:
                f.write(raw)
            if f32 is not None:
                with open(os.path.join(d, f"{file}.{name}.f32"), "wb") as f:
                    f.write(np.ascontiguousarray(f32, dtype="<f4").tobytes())
        for k, v in (metadata or {}).items():
            m.write(f"meta {k} {v}\n")


def write(d):
    rng = np.random.default_rng(20240607)
    f16_specials = np.array(
        [0.0, -0.0, np.inf, -np.inf, np.nan, 65504.0, -65504.0,
         2.0**-14, 2.0**-24, -(2.0**-24), 3 * 2.0**-20, 1.0, -2.5, 0.1],
        dtype=np.float16)
    arrays = {
        "h.0.attn.c_attn.weight": rng.standard_normal((7, 13)).astype(np.float32),
        "h.0.ln_1.bias": rng.standard_normal(13).astype(np.float32),
        "wte.f64": rng.standard_normal((3, 5)),
        "f16.random": rng.standard_normal((5, 3)).astype(np.float16),
        "f16.specials": f16_specials.reshape(2, 7),
        "i64": rng.integers(-2**62, 2**62, size=5, dtype=np.int64),
        "i32": rng.integers(-2**31, 2**31, size=(2, 3), dtype=np.int32),
        "i16": rng.integers(-2**15, 2**15, size=3, dtype=np.int16),
        "u16": rng.integers(0, 2**16, size=3, dtype=np.uint16),
        "u8": rng.integers(0, 256, size=17, dtype=np.uint8),
        "i8": rng.integers(-128, 128, size=(1, 1, 3), dtype=np.int8),
        "bool": rng.integers(0, 2, size=9).astype(np.bool_),
        "scalar": np.array(3.25, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    metadata = {"format": "np"}  # one key: the official writer's key order for several is a hash order
    save_file(arrays, os.path.join(d, "official.safetensors"), metadata=metadata)
    dump(d, "official", {
        n: (header_dtype(a), a.shape, np.ascontiguousarray(a).tobytes(),
            a.astype(np.float32) if a.dtype.kind == "f" else None)
        for n, a in arrays.items()}, metadata)

    # bfloat16: numpy has none, so the bit patterns are made by hand and written with the raw API.
    bf16_random = (rng.standard_normal(33).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    bf16_specials = np.array(
        [0x0000, 0x8000, 0x7f80, 0xff80, 0x7fc0, 0x7f81, 0xffc1, 0x0001, 0x8001, 0x007f, 0x0080,
         0x7f7f, 0x3f80, 0xc020], dtype=np.uint16)
    raw = {
        "bf16.random": ("BF16", (3, 11), bf16_random),
        "bf16.specials": ("BF16", (14,), bf16_specials),
        "f32.tail": ("F32", (2, 2), rng.standard_normal(4).astype(np.float32)),
    }
    raw_serialize_file(raw, os.path.join(d, "official_bf16.safetensors"))
    dump(d, "official_bf16", {
        n: (dt, shape, a.tobytes(),
            (a.astype(np.uint32) << 16).view(np.float32) if dt == "BF16" else a.astype(np.float32))
        for n, (dt, shape, a) in raw.items()}, None)
    return 0


def raw_serialize_file(tensors, path):
    """tensors: name -> (header dtype, shape, numpy array holding the bytes)."""
    keep = []
    if hasattr(safetensors, "TensorSpec"):  # safetensors >= 0.7: pointers, not bytes
        specs = {}
        for name, (dt, shape, a) in tensors.items():
            a = np.ascontiguousarray(a)
            keep.append(a)
            specs[name] = safetensors.TensorSpec(dtype=RAW_NAME_OF[dt], shape=list(shape),
                                                 data_ptr=a.ctypes.data, data_len=a.nbytes)
        safetensors.serialize_file(specs, path, None)
    else:
        specs = {name: {"dtype": RAW_NAME_OF[dt], "shape": list(shape), "data": a.tobytes()}
                 for name, (dt, shape, a) in tensors.items()}
        safetensors.serialize_file(specs, path, None)


def read_manifest(d, file):
    tensors, metadata = {}, {}
    with open(os.path.join(d, file + ".manifest")) as m:
        for line in m:
            parts = line.split()
            if parts[0] == "tensor":
                name, dtype, ndim = parts[1], parts[2], int(parts[3])
                shape = [int(x) for x in parts[4:4 + ndim]]
                with open(os.path.join(d, f"{file}.{name}.bytes"), "rb") as f:
                    tensors[name] = (dtype, shape, f.read())
            elif parts[0] == "meta":
                metadata[parts[1]] = parts[2] if len(parts) > 2 else ""
    return tensors, metadata


def check(d, file):
    path = os.path.join(d, file + ".safetensors")
    expected, expected_meta = read_manifest(d, file)
    errors = []

    with open(path, "rb") as f:
        got = dict(safetensors.deserialize(f.read()))
    if sorted(got) != sorted(expected):
        errors.append(f"tensor names: official package sees {sorted(got)}, expected {sorted(expected)}")
    for name, (dtype, shape, raw) in expected.items():
        if name not in got:
            continue
        g = got[name]
        if g["dtype"] != dtype or list(g["shape"]) != shape or bytes(g["data"]) != raw:
            errors.append(f"{name}: official package sees dtype {g['dtype']} shape {list(g['shape'])} "
                          f"{len(g['data'])} bytes; expected {dtype} {shape} {len(raw)} bytes"
                          + (" (bytes differ)" if bytes(g["data"]) != raw else ""))

    with safetensors.safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
    if meta != expected_meta:
        errors.append(f"metadata: official package sees {meta}, expected {expected_meta}")

    if all(dt in NUMPY_OF for dt, _, _ in expected.values()):
        arrays = load_file(path)
        for name, (dtype, shape, raw) in expected.items():
            a = arrays.get(name)
            if a is None:
                errors.append(f"{name}: missing from load_file")
                continue
            want = np.frombuffer(raw, dtype=NUMPY_OF[dtype]).reshape(shape)
            if a.dtype != want.dtype or a.shape != want.shape or a.tobytes() != want.tobytes():
                errors.append(f"{name}: load_file gives {a.dtype} {a.shape}, expected {want.dtype} {want.shape}"
                              + (" (values differ)" if a.tobytes() != want.tobytes() else ""))

    for e in errors:
        print(f"{path}: {e}")
    if not errors:
        print(f"{path}: official safetensors {safetensors.__version__} reads all {len(expected)} tensors as expected")
    return 1 if errors else 0


def main(argv):
    if len(argv) == 3 and argv[1] == "write":
        return write(argv[2])
    if len(argv) == 4 and argv[1] == "check":
        return check(argv[2], argv[3])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
