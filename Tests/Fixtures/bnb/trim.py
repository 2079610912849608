"""Trim the bitsandbytes reference data to what CQLoRAKernelsTests needs.

Source (read-only, produced by bitsandbytes 0.50.2 on CPU; see its README.md, section 5):
  /work/shared/fixtures/tiny-llama/model.safetensors      the fp32 weights
  /work/shared/fixtures/tiny-llama/bnb_quant.safetensors  bnb's codes, scales and dequantizations
Output: bnb_tiny_llama.safetensors beside this script. Keys drop the "layers.0.mlp." and
"layers.0.self_attn." prefixes; dequantizations keep only their first 32 rows (enough to
decode every nibble value, and block 159 of down_proj, the near-tie of double quant).

Run: python3 trim.py [SOURCE_DIR]   (numpy only)
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np

DTYPES = {"F32": np.float32, "U8": np.uint8, "I8": np.int8, "I64": np.int64}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


def load(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        data = np.frombuffer(raw[8 + n + start:8 + n + end], dtype=DTYPES[entry["dtype"]])
        out[key] = data.reshape(entry["shape"])
    return out


def save(path, tensors, metadata):
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for key, array in tensors.items():
        blob = np.ascontiguousarray(array).tobytes()
        header[key] = {"dtype": NAMES[array.dtype], "shape": list(array.shape),
                       "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/fixtures/tiny-llama")
    model, bnb = load(source / "model.safetensors"), load(source / "bnb_quant.safetensors")
    out = {}
    for prefix, short in (("layers.0.mlp.down_proj", "down_proj"), ("layers.0.self_attn.q_proj", "q_proj")):
        out[f"{short}.weight"] = model[f"model.{prefix}.weight"]
        for quant in ("nf4", "fp4"):
            # Double quant changes only the scales: one set of codes serves both variants.
            assert np.array_equal(bnb[f"{prefix}.{quant}.packed"], bnb[f"{prefix}.{quant}_dq.packed"])
            out[f"{short}.{quant}.packed"] = bnb[f"{prefix}.{quant}.packed"]
            out[f"{short}.{quant}.absmax"] = bnb[f"{prefix}.{quant}.absmax"]
            out[f"{short}.{quant}.dequant"] = bnb[f"{prefix}.{quant}.dequant"][:32]
            for part in ("absmax_q", "nested_absmax", "offset", "absmax_dequant"):
                out[f"{short}.{quant}_dq.{part}"] = bnb[f"{prefix}.{quant}_dq.{part}"]
            out[f"{short}.{quant}_dq.dequant"] = bnb[f"{prefix}.{quant}_dq.dequant"][:32]
    out["q_proj.int8_rowwise.codes"] = bnb["layers.0.self_attn.q_proj.int8_rowwise.codes"]
    out["q_proj.int8_rowwise.row_absmax"] = bnb["layers.0.self_attn.q_proj.int8_rowwise.row_absmax"]
    save(Path(__file__).with_name("bnb_tiny_llama.safetensors"), out,
         {"source": "shared/fixtures/tiny-llama (bitsandbytes 0.50.2, CPU), trimmed by trim.py"})


if __name__ == "__main__":
    main()
