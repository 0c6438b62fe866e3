"""Writes Tests/EngineTests/Fixtures/dequant-blocks.json: random GGUF blocks of Q5_0, Q4_K and Q6_K
(and the older formats) with the values the `gguf` Python package's independent decoder gives."""
import importlib.metadata, json, sys
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize
rng = np.random.default_rng(7)
def f16(x): return np.array([x], dtype=np.float16).tobytes()
out = {"source": "gguf %s (PyPI), gguf.quants.dequantize" % importlib.metadata.version("gguf"), "blocks": []}
def add(name, qt, blocks, make):
    raw = b"".join(make() for _ in range(blocks))
    vals = dequantize(np.frombuffer(raw, dtype=np.uint8), qt).astype(np.float32).ravel()
    out["blocks"].append({"format": name, "hex": raw.hex(), "values": [float(v) for v in vals]})
add("Q5_0", T.Q5_0, 3, lambda: f16(rng.uniform(-0.1, 0.1)) + rng.integers(0, 256, 20, dtype=np.uint8).tobytes())
add("Q4_K", T.Q4_K, 2, lambda: f16(rng.uniform(0, 0.01)) + f16(rng.uniform(0, 0.02)) + rng.integers(0, 256, 140, dtype=np.uint8).tobytes())
add("Q6_K", T.Q6_K, 2, lambda: rng.integers(0, 256, 192, dtype=np.uint8).tobytes() + rng.integers(-128, 128, 16, dtype=np.int8).tobytes() + f16(rng.uniform(-0.01, 0.01)))
add("Q8_0", T.Q8_0, 2, lambda: f16(rng.uniform(-0.1, 0.1)) + rng.integers(-128, 128, 32, dtype=np.int8).tobytes())
add("Q4_0", T.Q4_0, 2, lambda: f16(rng.uniform(-0.1, 0.1)) + rng.integers(0, 256, 16, dtype=np.uint8).tobytes())
add("Q4_1", T.Q4_1, 2, lambda: f16(rng.uniform(-0.1, 0.1)) + f16(rng.uniform(-0.1, 0.1)) + rng.integers(0, 256, 16, dtype=np.uint8).tobytes())
json.dump(out, open(sys.argv[1], "w"), indent=0)
