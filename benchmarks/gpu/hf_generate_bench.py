"""HF transformers `generate` on the GPU at a Llama config's shape (random bf16 weights, sdpa
attention), the peer of Tandem's offline_bench for the end-to-end tokens/s ratio (issue 4, item 4).

    python3 benchmarks/gpu/hf_generate_bench.py --config configs/models/llama-3.1-8b.json \
        --batches 1,32 --prompt-tokens 128 --output-tokens 128

Prints one markdown row per batch: output tokens/s of greedy generation with exactly
--output-tokens new tokens per sequence (min_new_tokens = max_new_tokens, EOS never stops it),
after one warm-up call. Runs on the device image (torch + transformers), no network.
"""
import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--batches", default="1,32")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--output-tokens", type=int, default=128)
    args = p.parse_args()

    with open(args.config) as f:
        raw = json.load(f)
    config = LlamaConfig(**{k: v for k, v in raw.items() if k not in ("architectures", "torch_dtype")})
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    gen = torch.Generator(device="cuda").manual_seed(1)
    print(f"\n# hf_generate_bench: transformers {__import__('transformers').__version__}, torch "
          f"{torch.__version__}, {torch.cuda.get_device_name(0)}, sdpa, bf16, random weights\n")
    print("| batch | prompt | output | wall s | output tok/s |")
    print("|---|---|---|---|---|")
    for batch in [int(b) for b in args.batches.split(",")]:
        ids = torch.randint(0, config.vocab_size, (batch, args.prompt_tokens), device="cuda", generator=gen)
        mask = torch.ones_like(ids)
        kwargs = dict(attention_mask=mask, do_sample=False, max_new_tokens=args.output_tokens,
                      min_new_tokens=args.output_tokens, pad_token_id=0)
        with torch.inference_mode():
            model.generate(ids, **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model.generate(ids, **kwargs)
            torch.cuda.synchronize()
            wall = time.perf_counter() - t0
        new = (out.shape[1] - args.prompt_tokens) * batch
        print(f"| {batch} | {args.prompt_tokens} | {args.output_tokens} | {wall:.2f} | {new / wall:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
