#!/usr/bin/env python3
"""PyTorch figures on the shapes flexsp_bench_gpu measured, side by side with ours.

Reads the JSON lines written by `flexsp_bench_gpu --json FILE` and, on the same GPU in the same
run, times:
  * attention: torch.nn.functional.scaled_dot_product_attention, causal, in the dtype of our
    row: bf16 with the FlashAttention backend, fp32 with the memory-efficient backend
    (FlashAttention has no fp32 kernels). SDPA takes no packed varlen batches, so
    sequences of equal length are batched and each distinct length is one call; FLOPs are
    counted exactly as ours (causal half, backward = 2.5 x forward).
  * GEMM: torch.matmul (cuBLAS) in fp32 (TF32 off), TF32 and bf16; ratio = ours / torch.

Usage: torch_reference.py OURS.jsonl
"""
import json
import statistics
import sys
from collections import Counter


def timed_ms(torch, fn, reps):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def sdpa_ms(torch, lengths, heads, head_dim, dtype, backend, reps):
    from torch.nn.attention import sdpa_kernel
    import torch.nn.functional as F

    groups = Counter(lengths)
    tensors = []
    for length, count in groups.items():
        if length == 0:
            continue
        shape = (count, heads, length, head_dim)
        q, k, v = (torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
        tensors.append((q, k, v, torch.randn(shape, device="cuda", dtype=dtype)))

    def forward():
        with sdpa_kernel(backend):
            return [F.scaled_dot_product_attention(q, k, v, is_causal=True) for q, k, v, _ in tensors]

    def forward_backward():
        outs = forward()
        torch.autograd.backward(outs, [g for *_, g in tensors])

    with torch.no_grad():
        fwd = timed_ms(torch, forward, reps)
    both = timed_ms(torch, forward_backward, reps)
    return fwd, max(both - fwd, 0.0)


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    ours = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    try:
        import torch
    except ImportError as e:
        print(f"PyTorch reference skipped: cannot import torch ({e})")
        return 0
    if not torch.cuda.is_available():
        print("PyTorch reference skipped: torch.cuda.is_available() is False")
        return 0
    from torch.nn.attention import SDPBackend

    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {torch.cuda.get_device_name(0)}")
    reps = 10
    print("\n== attention, causal varlen: TFLOP/s (forward | backward); ratio = flexsp / torch on the same dtype ==")
    print("   (bf16: torch FlashAttention; f32: torch memory-efficient, FlashAttention has no fp32 kernels)")
    print(f"{'shape':<14} {'dtype':<5} {'H':>3} {'Dh':>4} {'tokens':>7} | {'flexsp':>17} | {'torch':>17} | ratio fwd/bwd")
    cache = {}
    for r in (x for x in ours if x["kind"] == "attention"):
        lengths, heads, dh, dt = r["lengths"], r["heads"], r["head_dim"], r.get("dtype", "f32")
        ff, bf = r["fwd_flops"], r["bwd_flops"]
        tf = lambda flops, ms: flops / ms / 1e9 if ms > 0 else float("nan")
        dtype, backend = ((torch.bfloat16, SDPBackend.FLASH_ATTENTION) if dt == "bf16"
                          else (torch.float32, SDPBackend.EFFICIENT_ATTENTION))
        key = (tuple(lengths), heads, dh, dt)
        if key not in cache:
            try:
                fwd, bwd = sdpa_ms(torch, lengths, heads, dh, dtype, backend, reps)
                cache[key] = (tf(ff, fwd), tf(bf, bwd))
            except RuntimeError as e:  # backend refuses the shape or dtype
                print(f"  ({backend.name} {dtype}: {str(e).splitlines()[0]})")
                cache[key] = (float("nan"), float("nan"))
        theirs = cache[key]
        mine = (tf(ff, r["fwd_ms"]), tf(bf, r["bwd_ms"]))
        ratio = (mine[0] / theirs[0], mine[1] / theirs[1]) if theirs[0] == theirs[0] else (float("nan"),) * 2
        print(f"{r['name']:<14} {dt:<5} {heads:>3} {dh:>4} {sum(lengths):>7} | {mine[0]:7.2f} | {mine[1]:7.2f} | "
              f"{theirs[0]:7.2f} | {theirs[1]:7.2f} | {ratio[0]:.2f} / {ratio[1]:.2f}   #wrong {r['wrong']}")

    print("\n== GEMM (row-major C[m,n] = A[m,k] B[k,n]): TFLOP/s, ratio = flexsp / torch.matmul (cuBLAS) ==")
    for r in (x for x in ours if x["kind"] == "gemm"):
        m, n, k, dt = r["m"], r["n"], r["k"], r["dtype"]
        dtype = torch.bfloat16 if dt == "bf16" else torch.float32
        torch.backends.cuda.matmul.allow_tf32 = dt == "tf32"
        a = torch.randn((m, k), device="cuda", dtype=dtype)
        b = torch.randn((k, n), device="cuda", dtype=dtype)
        c = torch.empty((m, n), device="cuda", dtype=dtype)
        ms = timed_ms(torch, lambda: torch.matmul(a, b, out=c), reps)
        mine, theirs = r["flops"] / r["ms"] / 1e9, r["flops"] / ms / 1e9
        print(f"{r['name']:<18} m={m:>5} n={n:>5} k={k:>5} {dt:<4} | flexsp {mine:7.2f} | torch {theirs:7.2f} | "
              f"ratio {mine / theirs:.3f}   #wrong {r['wrong']}")
        del a, b, c
    torch.backends.cuda.matmul.allow_tf32 = False

    for r in (x for x in ours if x["kind"] == "train_step"):
        print(f"\ntrain step {r['name']}: {r['ms']:.2f} ms for {r['tokens']} tokens = "
              f"{r['tokens'] / r['ms'] * 1e3:.0f} tokens/s ({r['params']} parameters, fp32, "
              f"attention {r.get('attention', 'fp32')}, GEMMs {r.get('matmul', 'fp32')})   #wrong {r['wrong']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
