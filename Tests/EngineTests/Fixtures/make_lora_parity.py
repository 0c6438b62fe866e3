"""Writes Tests/EngineTests/Fixtures/lora-parity.json: the loss and LoRA gradients that PyTorch +
PEFT compute on the same GGUF (transformers' fp32 dequantisation) for a fixed LoRA, to check the
engine's full-sequence backward (`SequencePath`, `LoRA`) against an independent implementation.

    pip install torch transformers gguf peft
    python3 Tests/EngineTests/Fixtures/make_lora_parity.py ~/.cache/intervene/models \
        Tests/EngineTests/Fixtures/lora-parity.json

LoRA: rank 4, alpha 8 (scale 2) on v_proj and o_proj of every layer (no RoPE permutation is
involved there), A[l][i, j] = 0.02·sin(1 + 7i + 0.37j + l), B[l][i, j] = 0.02·cos(2 + 3i + 0.11j + l)
(o_proj: the same with l + 100). Loss: mean over the prompts of −log p(first target token) at the
last prompt position; prompts "Q: x\\nA:", targets " y", no BOS (SmolLM2's GGUF asks for none)."""
import importlib.metadata, json, math, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import LoraConfig, get_peft_model

models, out = sys.argv[1], sys.argv[2]
gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
tok = AutoTokenizer.from_pretrained(models, gguf_file=gguf)
model = AutoModelForCausalLM.from_pretrained(models, gguf_file=gguf, dtype=torch.float32)
model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["v_proj", "o_proj"]))
pairs = [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow")]
layers = model.base_model.model.model.layers


def fill(t, f):
    with torch.no_grad():
        r, c = t.shape
        t.copy_(torch.tensor([[f(i, j) for j in range(c)] for i in range(r)], dtype=torch.float32))


for l, layer in enumerate(layers):
    for name, mod, k in (("v", layer.self_attn.v_proj, l), ("o", layer.self_attn.o_proj, l + 100)):
        fill(mod.lora_A["default"].weight, lambda i, j: 0.02 * math.sin(1 + 7 * i + 0.37 * j + k))
        fill(mod.lora_B["default"].weight, lambda i, j: 0.02 * math.cos(2 + 3 * i + 0.11 * j + k))
prompts = [tok(f"Q: {x}\nA:", add_special_tokens=False).input_ids for x, _ in pairs]
targets = [tok(" " + y, add_special_tokens=False).input_ids[0] for _, y in pairs]
loss = 0
for ids, t in zip(prompts, targets):
    logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    loss = loss + torch.nn.functional.cross_entropy(logits[None], torch.tensor([t])) / len(pairs)
loss.backward()
grads = {}
for l, layer in enumerate(layers):
    for name, mod in (("v", layer.self_attn.v_proj), ("o", layer.self_attn.o_proj)):
        for part, w in (("A", mod.lora_A["default"].weight), ("B", mod.lora_B["default"].weight)):
            g = w.grad.flatten()
            grads[f"{l}.{name}.{part}"] = {"l2": float(g.norm()), "first4": [float(v) for v in g[:4]],
                                           "argmax_abs": int(g.abs().argmax())}
json.dump({"source": "torch %s, transformers %s, peft %s" % tuple(importlib.metadata.version(p)
                                                                   for p in ("torch", "transformers", "peft")),
           "prompts": prompts, "targets": targets, "loss": float(loss), "gradients": grads}, open(out, "w"), indent=0)
print("loss", float(loss))
