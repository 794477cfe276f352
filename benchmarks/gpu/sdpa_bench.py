"""PyTorch scaled_dot_product_attention (flash backend only) at the shape of
benchmarks/gpu/prefill_attention_bench.cpp: contiguous bf16 [1, 32, T, 128] q, k, v, is_causal=True.

Causal FLOPs 4 * heads * head_dim * T (T + 1) / 2; median of 20 timed runs (device events) after 5
warm-ups, inputs rotated over four sets. Prints a markdown table.

    python3 benchmarks/gpu/sdpa_bench.py [--tokens 2048,8192]
"""
import argparse
import statistics

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

HEADS, HEAD_DIM, SETS = 32, 128, 4


def time_sdpa(t: int) -> float:
    sets = [[torch.empty(1, HEADS, t, HEAD_DIM, device="cuda", dtype=torch.bfloat16).uniform_(-1, 1)
             for _ in range(3)] for _ in range(SETS)]
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        for rep in range(25):
            q, k, v = sets[rep % SETS]
            start.record()
            torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            stop.record()
            stop.synchronize()
            if rep >= 5:
                times.append(start.elapsed_time(stop) * 1e-3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", default="2048,8192")
    args = parser.parse_args()
    print(f"# sdpa_bench ({torch.cuda.get_device_name()}, torch {torch.__version__})\n")
    print("| T | kernel | ms | TFLOP/s |")
    print("| --- | --- | --- | --- |")
    for t in (int(x) for x in args.tokens.split(",")):
        seconds = time_sdpa(t)
        flops = 4.0 * HEADS * HEAD_DIM * t * (t + 1) / 2
        print(f"| {t} | torch SDPA flash | {seconds * 1e3:.3f} | {flops / seconds / 1e12:.0f} |")


if __name__ == "__main__":
    main()
