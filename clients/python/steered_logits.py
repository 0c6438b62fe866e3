"""The next-token logits of a Hugging Face transformers model (loaded from the GGUF file) with a Δ
artefact applied by intervene_delta: the independent side of the interop check. Writes JSON:
per prompt, the token ids and the top-k ids and logits at the last position, with Δ and without.

    python3 clients/python/steered_logits.py --gguf ~/.cache/intervene/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --delta Tests/EngineTests/Fixtures/interop-delta.safetensors --out steered.json
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import intervene_delta  # noqa: E402

PROMPTS = ["Q: hot\nA:", "Q: big\nA:", "The capital of France is", "hot:"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", required=True, help="the model's .gguf file")
    ap.add_argument("--delta", required=True, help="a Δ artefact (.safetensors)")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "2")))
    folder, name = os.path.split(os.path.abspath(a.gguf))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32).eval()

    def top(prompt):
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            z = model(ids).logits[0, -1]
        v, i = torch.topk(z, a.top)
        return ids[0].tolist(), i.tolist(), [float(x) for x in v]

    rows = []
    for p in PROMPTS:
        ids, plain_ids, plain_logits = top(p)
        h = intervene_delta.apply(model, a.delta, scale=a.scale, gguf_path=a.gguf)
        try:
            _, ids_d, logits_d = top(p)
        finally:
            h.remove()
        rows.append({"prompt": p, "token_ids": ids, "top_ids": ids_d, "top_logits": logits_d,
                     "plain_top_ids": plain_ids, "plain_top_logits": plain_logits})
    meta = intervene_delta.load(a.delta).metadata
    out = {"model_sha256": intervene_delta.sha256_of(a.gguf), "delta_layer": int(meta["layer"]), "scale": a.scale,
           "torch": torch.__version__, "transformers": __import__("transformers").__version__, "prompts": rows}
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
