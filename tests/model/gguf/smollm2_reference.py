#!/usr/bin/env python3
"""Reference values for a real GGUF file (the default SmolLM2-135M-Instruct Q4_1 model), computed
with the official `gguf` package: GGUFReader + gguf.quants.dequantize, Q/K rows put back in Hugging
Face order with the inverse of convert_hf_to_gguf.py's permute.

Usage: smollm2_reference.py GGUF OUT_DIR
Writes OUT_DIR/smollm2.json (metadata summary, per tensor: GGUF name, HF shape, first row and row
count of the reference slice, reference file) and OUT_DIR/<gguf name>.f32 (little-endian f32).
"""
import json
import pathlib
import sys

import numpy as np
import gguf

# (GGUF name, rows to compare: None = all)
TENSORS = [
    ("blk.0.attn_q.weight", None),
    ("blk.0.attn_k.weight", None),
    ("blk.0.attn_v.weight", None),
    ("blk.0.attn_output.weight", None),
    ("blk.0.ffn_down.weight", None),
    ("blk.29.ffn_gate.weight", None),
    ("blk.29.attn_k.weight", None),
    ("blk.0.attn_norm.weight", None),
    ("output_norm.weight", None),
    ("token_embd.weight", (49152 - 96, 96)),
]


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of convert_hf_to_gguf.py's LlamaModel.permute."""
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def scalar(reader, key):
    field = reader.fields.get(key)
    if field is None:
        return None
    if field.types[0] == gguf.GGUFValueType.STRING:
        return bytes(field.parts[-1]).decode("utf-8")
    return field.parts[-1].tolist()[0]


def main() -> None:
    path, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    r = gguf.GGUFReader(str(path))
    n_head = scalar(r, "llama.attention.head_count")
    n_kv = scalar(r, "llama.attention.head_count_kv")
    summary = {key: scalar(r, key) for key in [
        "general.architecture", "general.name", "llama.block_count", "llama.context_length",
        "llama.embedding_length", "llama.feed_forward_length", "llama.attention.head_count",
        "llama.attention.head_count_kv", "llama.rope.freq_base",
        "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size", "llama.rope.dimension_count",
        "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.add_bos_token"]}
    summary["n_tokens"] = len(r.fields["tokenizer.ggml.tokens"].data)
    summary["n_merges"] = len(r.fields["tokenizer.ggml.merges"].data)
    summary["has_chat_template"] = "tokenizer.chat_template" in r.fields
    summary["has_output_weight"] = any(t.name == "output.weight" for t in r.tensors)
    type_counts = {}
    for t in r.tensors:
        type_counts[t.tensor_type.name] = type_counts.get(t.tensor_type.name, 0) + 1
    summary["tensor_types"] = type_counts
    summary["n_tensors"] = len(r.tensors)

    by_name = {t.name: t for t in r.tensors}
    entries = []
    for name, rows in TENSORS:
        t = by_name[name]
        hf_shape = [int(d) for d in reversed(t.shape)]
        first, count = rows if rows else (0, hf_shape[0])
        data = t.data[first:first + count] if rows else t.data  # rows are whole blocks
        values = gguf.quants.dequantize(data, t.tensor_type).astype(np.float32)
        values = values.reshape([count] + hf_shape[1:])
        if ".attn_q." in name:
            values = unpermute(values, n_head)
        elif ".attn_k." in name:
            values = unpermute(values, n_kv)
        np.ascontiguousarray(values).astype("<f4").tofile(out / f"{name}.f32")
        entries.append({"name": name, "type": t.tensor_type.name, "shape": hf_shape,
                        "first_row": first, "rows": count, "ref": f"{name}.f32"})
    (out / "smollm2.json").write_text(json.dumps({"summary": summary, "tensors": entries}, indent=1))


if __name__ == "__main__":
    main()
