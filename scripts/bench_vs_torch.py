#!/usr/bin/env python3
"""Training speed on one CPU device against PyTorch: tokens/s of forward + backward + AdamW.

    bench_vs_torch.py [--family gpt2|llama|both] [--threads 1,2] [--rounds 3] [--steps 3]
                      [--bench build/bench/flexsp_bench_kernels_step]

The model and batch are those of flexsp_bench_kernels_step: 4 layers, d_model 256, 8 heads,
vocab 256 (llama: 4 K/V heads, SwiGLU 688), eight sequences of 100-4096 tokens (8096). PyTorch
runs the same model from transformers (eager, scaled_dot_product_attention on each packed
sequence on its own, fused AdamW) with torch.set_num_threads(T); flexsp with FLEXSP_CPU_THREADS=T.
The two alternate, round by round, so both see the same machine; the figure is the ratio of
median step times (> 1: flexsp is faster). Needs torch and transformers (scripts/oracle.sh
installs them into build/oracle-venv).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

LENGTHS = [4096, 1500, 900, 600, 400, 300, 200, 100]


def torch_model(family):
    if family == "gpt2":
        cfg = GPT2Config(n_embd=256, n_head=8, n_layer=4, n_positions=4096, vocab_size=256, resid_pdrop=0.0,
                         embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new")
        return GPT2LMHeadModel(cfg)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=688, num_attention_heads=8, num_key_value_heads=4,
                      num_hidden_layers=4, vocab_size=256, max_position_embeddings=4096, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


def torch_steps(model, opt, seqs, steps):
    tokens = sum(LENGTHS)
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        for s in seqs:
            logits = model(input_ids=s[:-1].unsqueeze(0)).logits[0]
            loss = torch.nn.functional.cross_entropy(logits, s[1:], reduction="sum") / tokens
            loss.backward()
        opt.step()
        out.append(time.perf_counter() - t0)
    return out


def flexsp_steps(bench, family, steps, threads):
    env = dict(os.environ, FLEXSP_CPU_THREADS=str(threads))
    r = subprocess.run([bench, "--family", family, "--steps", str(steps), "--json"], env=env, capture_output=True,
                       text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])["seconds"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="both", choices=["gpt2", "llama", "both"])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--bench", default=os.path.join(here, "..", "build", "bench", "flexsp_bench_kernels_step"))
    a = ap.parse_args()
    families = ["gpt2", "llama"] if a.family == "both" else [a.family]
    g = torch.Generator().manual_seed(10)
    seqs = [torch.randint(0, 256, (n + 1,), generator=g) for n in LENGTHS]
    tokens = sum(LENGTHS)
    print(f"torch {torch.__version__}, {len(LENGTHS)} sequences, {tokens} tokens; median s/step, tokens/s")
    for family in families:
        for threads in [int(t) for t in a.threads.split(",")]:
            torch.set_num_threads(threads)
            torch.manual_seed(1)
            model = torch_model(family)
            model.config._attn_implementation = "sdpa"
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
            torch_steps(model, opt, seqs, 1)  # warm-up
            t_times, f_times = [], []
            for _ in range(a.rounds):
                t_times += torch_steps(model, opt, seqs, a.steps)
                f_times += flexsp_steps(a.bench, family, a.steps, threads)
            t_med, f_med = statistics.median(t_times), statistics.median(f_times)
            print(f"{family:5s} {threads} thread(s): torch {t_med:.3f} s ({tokens / t_med:.0f} tok/s)  flexsp "
                  f"{f_med:.3f} s ({tokens / f_med:.0f} tok/s)  flexsp/torch {t_med / f_med:.2f}x")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
