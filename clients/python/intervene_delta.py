"""Apply a learned Δ artefact (from Intervene's `worker run` or a coordinator store) to a
Hugging Face transformers Llama-family model.

A Δ is added to the input of layer ℓ's ``o_proj`` (the concatenated attention-head outputs), by
default at the prompt's last position only, as it was learned. The artefact is a safetensors file
with one F32 tensor ``delta`` of shape [heads · head_dim] and string metadata (``layer``,
``heads``, ``head_dim``, ``positions``, ``model_sha256``, …).

    from transformers import AutoModelForCausalLM
    import intervene_delta as idelta
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    handle = idelta.apply(model, "runs/3f…e1.safetensors", gguf_path=folder + "/SmolLM2-135M-Instruct.Q4_1.gguf")
    ...                                   # model.generate / model(...) are now steered
    handle.remove()

Only the standard library, numpy and torch are needed (the safetensors package is not).
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field

import numpy as np

POSITIONS = ("last", "all", "generated", "last+generated")


@dataclass
class Delta:
    values: np.ndarray            # float32 [heads * head_dim]
    metadata: dict = field(default_factory=dict)

    @property
    def layer(self) -> int:
        return int(self.metadata["layer"])


def load(path: str) -> Delta:
    """Reads a Δ artefact (safetensors: 8-byte header length, JSON header, raw data)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    if "delta" not in header:
        raise ValueError(f"{path}: no tensor named 'delta' (tensors: {sorted(header)})")
    t = header["delta"]
    if t["dtype"] != "F32":
        raise ValueError(f"{path}: delta is {t['dtype']}, expected F32")
    a, b = t["data_offsets"]
    values = np.frombuffer(raw[8 + n + a:8 + n + b], dtype="<f4").copy()
    return Delta(values, meta)


def sha256_of(path: str) -> str:
    side = path + ".sha256"
    if os.path.exists(side):
        s = open(side).read().strip()
        if len(s) == 64:
            return s
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check(model, d: Delta, name: str = "Δ", gguf_path: str | None = None) -> None:
    """Raises ValueError naming both sides when the artefact does not fit the model."""
    cfg = model.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    m = d.metadata
    if gguf_path is not None and m.get("model_sha256"):
        sha = sha256_of(gguf_path)
        if sha != m["model_sha256"]:
            raise ValueError(f"{name}: learned on model {m.get('model')} (sha256 {m['model_sha256'][:12]}…), "
                             f"but {gguf_path} has sha256 {sha[:12]}…")
    layer = d.layer
    if not 0 <= layer < cfg.num_hidden_layers:
        raise ValueError(f"{name}: layer {layer} is outside this model's 0…{cfg.num_hidden_layers - 1}")
    if int(m.get("heads", heads)) != heads or int(m.get("head_dim", head_dim)) != head_dim:
        raise ValueError(f"{name}: Δ is for {m.get('heads')} heads × {m.get('head_dim')}, "
                         f"this model has {heads} heads × {head_dim}")
    if d.values.shape[0] != heads * head_dim:
        raise ValueError(f"{name}: Δ has {d.values.shape[0]} values, this model's heads need {heads * head_dim}")
    if m.get("positions", "last") != "last":
        raise ValueError(f"{name}: learned at positions {m.get('positions')!r}; only 'last' is known")


class Handle:
    def __init__(self, hooks):
        self._hooks = hooks

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


def apply(model, deltas, scale: float = 1.0, positions: str = "last", gguf_path: str | None = None) -> Handle:
    """Adds each Δ (a path, a `Delta`, or a list of them) to its layer's o_proj input; Δs of one
    layer add up. `positions`: "last" (the prompt's last position, as learned: the first forward
    call of a generation, at each sequence's last position; right-aligned batches only), "all",
    "generated" (calls after the first, i.e. tokens read back during generation) or
    "last+generated". Returns a handle whose remove() undoes it."""
    import torch

    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, not {positions!r}")
    if isinstance(deltas, (str, Delta)):
        deltas = [deltas]
    per_layer: dict[int, np.ndarray] = {}
    for item in deltas:
        d = load(item) if isinstance(item, str) else item
        check(model, d, item if isinstance(item, str) else "Δ", gguf_path)
        per_layer[d.layer] = per_layer.get(d.layer, 0) + d.values.astype(np.float32) * scale
    hooks = []
    for layer, vec in per_layer.items():
        o_proj = model.model.layers[layer].self_attn.o_proj
        state = {"calls": 0}
        v = torch.from_numpy(vec)

        def pre_hook(module, args, v=v, state=state):
            (x,) = args[:1]
            first = state["calls"] == 0
            state["calls"] += 1
            x = x.clone()
            dv = v.to(dtype=x.dtype, device=x.device)
            if positions == "all" or (positions in ("generated", "last+generated") and not first):
                x += dv
            elif first and positions in ("last", "last+generated"):
                x[:, -1, :] += dv
            return (x,) + tuple(args[1:])

        hooks.append(o_proj.register_forward_pre_hook(pre_hook))

        # a new prompt pass starts the count again: a forward without a filled KV cache, or with
        # more than one position
        def reset(module, args, kwargs, state=state):
            ids = kwargs.get("input_ids", args[0] if args else None)
            cache = kwargs.get("past_key_values")
            empty = cache is None or (hasattr(cache, "get_seq_length") and cache.get_seq_length() == 0)
            if empty or (ids is not None and ids.shape[-1] > 1):
                state["calls"] = 0

        hooks.append(model.register_forward_pre_hook(reset, with_kwargs=True))
    return Handle(hooks)
