#!/usr/bin/env python3
"""Compares flexsp's loss and gradients with PyTorch + transformers on the same model and batch.

    oracle_check.py DUMP_DIR        (written by flexsp_oracle_dump)

Loads DUMP_DIR/model with transformers (GPT2LMHeadModel or LlamaForCausalLM), runs every
sequence of DUMP_DIR/batch.json on its own (flexsp packs them with positions restarting at 0,
which is the same), sums the token losses, back-propagates, and compares the loss and every
parameter's gradient with DUMP_DIR/grads/model.safetensors: relative error (L2 of the
difference over L2 of the reference) at most 1e-4 in fp32. Exit status 0 when all agree.
"""
import json
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    dump = sys.argv[1]
    torch.manual_seed(0)
    try:  # `dtype` in recent transformers, `torch_dtype` before
        model = AutoModelForCausalLM.from_pretrained(f"{dump}/model", dtype=torch.float32, attn_implementation="eager")
    except TypeError:
        model = AutoModelForCausalLM.from_pretrained(f"{dump}/model", torch_dtype=torch.float32,
                                                     attn_implementation="eager")
    model.eval()  # no dropout
    batch = json.load(open(f"{dump}/batch.json"))
    total = torch.zeros((), dtype=torch.float64)
    for ids in batch["sequences"]:
        t = torch.tensor(ids, dtype=torch.long)
        logits = model(input_ids=t[:-1].unsqueeze(0)).logits[0].float()
        loss = torch.nn.functional.cross_entropy(logits, t[1:], reduction="sum")
        loss.backward()
        total += loss.detach().double()
    ours = batch["loss_sum"]
    worst = abs(total.item() - ours) / abs(ours)
    ok = worst <= 1e-4
    print(f"{batch['family']}: loss sum torch {total.item():.6f} flexsp {ours:.6f} (rel {worst:.2e})")
    grads = load_file(f"{dump}/grads/model.safetensors")
    named = dict(model.named_parameters())
    for name, g in sorted(grads.items()):
        p = named.get(name)
        if p is None or p.grad is None:
            print(f"  {name}: no such parameter (or no gradient) in the transformers model")
            ok = False
            continue
        ref = p.grad.float()
        err = ((ref - g).norm() / ref.norm().clamp_min(1e-30)).item()
        flag = "" if err <= 1e-4 else "   <-- differs"
        print(f"  {name:48s} rel {err:.2e}{flag}")
        ok = ok and err <= 1e-4
    print("agree" if ok else "DISAGREE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
