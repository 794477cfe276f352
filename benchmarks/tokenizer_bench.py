#!/usr/bin/env python3
"""HF `tokenizers` encode throughput (one thread, no encode_batch) on the text tokenizer_bench.cpp
uses, then Tandem's (by running the tokenizer_bench binary), as one table with the ratio.

Usage: .venv/bin/python benchmarks/tokenizer_bench.py [--bench build/benchmarks/tokenizer_bench]
                                                      [--testdata ../shared/testdata] [--seconds 2]
"""
import argparse
import json
import os
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"
from tokenizers import Tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def bench_text(vectors):
    texts = [json.loads(l)["text"] for l in open(vectors, encoding="utf-8")]
    return "\n".join(t for t in texts if len(t) >= 300)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default=str(REPO / "build" / "benchmarks" / "tokenizer_bench"))
    ap.add_argument("--testdata", default=str(REPO.parent / "shared" / "testdata"))
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()

    tandem = {}
    if Path(args.bench).exists():
        out = subprocess.run([args.bench, "--testdata", args.testdata, "--seconds", str(args.seconds)],
                             check=True, capture_output=True, text=True).stdout
        for line in out.splitlines()[1:]:
            parts = line.split()
            tandem[parts[0]] = float(parts[3])

    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(Path(args.testdata) / "tokenizers.tar.gz") as tar:
            tar.extractall(tmp)
        print(f"{'vocab':<8} {'bytes':>8} {'HF MB/s':>9} {'tandem MB/s':>12} {'ratio':>7}")
        for name in ("gpt2", "llama3", "qwen2"):
            d = Path(tmp) / "tokenizers" / name
            tok = Tokenizer.from_file(str(d / "tokenizer.json"))
            text = bench_text(d / "vectors.jsonl")
            data = len(text.encode())
            tok.encode(text, add_special_tokens=False)  # warm-up (fills the cache)
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                tok.encode(text, add_special_tokens=False)
                n += 1
            hf = n * data / (time.perf_counter() - start) / 1e6
            t = tandem.get(name)
            ratio = f"{t / hf:7.2f}" if t else "    n/a"
            ts = f"{t:12.2f}" if t else "         n/a"
            print(f"{name:<8} {data:>8} {hf:9.2f} {ts} {ratio}")


if __name__ == "__main__":
    main()
