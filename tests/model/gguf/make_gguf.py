#!/usr/bin/env python3
"""Writes the GGUF test files for tandem_model_gguf_tests with the official `gguf` package.

Usage: make_gguf.py --out DIR [--tiny-llama DIR]

DIR/types.gguf          one [3, 512] tensor per supported ggml type ("t.F32", "t.Q4_K", ...) from
                        seeded random data, a 1-D and a 3-D tensor, metadata of every value type,
                        tokenizer metadata; architecture "tandem-test".
DIR/types.json          what the C++ test expects: per tensor type/shape/reference file, per key
                        type/value, the vocabulary.
DIR/ref/<name>.f32      the reference values (little-endian f32, row-major HF shape), computed by
                        gguf.quants.dequantize (numpy) from the bytes written.
DIR/tiny-llama-bf16.gguf, DIR/tiny-llama-f32.gguf
                        the tiny-llama safetensors checkpoint converted the way llama.cpp's
                        convert_hf_to_gguf.py does it (HF -> GGUF names, Q and K rows permuted with
                        `permute(w, n_head)`), matrices stored as BF16 or F32, norms as F32.
"""
import argparse
import json
import pathlib
import struct

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

ROWS, COLS = 3, 512


def write_ref(out: pathlib.Path, name: str, values: np.ndarray) -> str:
    rel = f"ref/{name}.f32"
    values.astype("<f4").tofile(out / rel)
    return rel


def random_k_quant_blocks(rng, qtype, n_blocks):
    """Random block bytes with finite fp16 scales (the rest of each block is any bit pattern)."""
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    def f16(values):
        return np.asarray(values, dtype=np.float16).view(np.uint8).reshape(n_blocks, 2)
    if qtype == Q.Q4_K:  # d, dmin first
        blocks[:, 0:2] = f16(rng.uniform(0.001, 0.05, n_blocks))
        blocks[:, 2:4] = f16(rng.uniform(0.0, 0.02, n_blocks))
    elif qtype == Q.Q6_K:  # d last
        blocks[:, 208:210] = f16(rng.uniform(-0.01, 0.01, n_blocks))
    else:
        raise ValueError(qtype)
    return blocks


def make_types(out: pathlib.Path, rng) -> None:
    (out / "ref").mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(out / "types.gguf"), "tandem-test")
    manifest = {"tensors": [], "metadata": {}, "vocab": {}}

    def add(name, data_or_bytes, qtype, shape, ref):
        if qtype in (Q.F32, Q.F16):
            w.add_tensor(name, data_or_bytes)
        else:
            w.add_tensor(name, data_or_bytes, raw_dtype=qtype)
        manifest["tensors"].append({"name": name, "type": qtype.name, "shape": list(shape),
                                    "ref": write_ref(out, name, ref.reshape(shape))})

    base = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    base[0, :8] = [0.0, -0.0, 1e-7, -3e-6, 65504.0, -65504.0, 1e30, -1e-30]
    add("t.F32", base, Q.F32, base.shape, base)
    with np.errstate(over="ignore"):
        f16 = base.astype(np.float16)  # 1e30 -> inf on purpose
    add("t.F16", f16, Q.F16, base.shape, f16.astype(np.float32))
    bf16 = gguf.quants.quantize(base, Q.BF16)
    add("t.BF16", bf16, Q.BF16, base.shape, gguf.quants.dequantize(bf16, Q.BF16))

    weights = (rng.standard_normal((ROWS, COLS)) * 0.05).astype(np.float32)
    for qtype in (Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1):
        packed = gguf.quants.quantize(weights, qtype)
        add(f"t.{qtype.name}", packed, qtype, weights.shape, gguf.quants.dequantize(packed, qtype))
    for qtype in (Q.Q4_K, Q.Q6_K):
        block_size, _ = gguf.GGML_QUANT_SIZES[qtype]
        n_blocks = ROWS * COLS // block_size
        packed = random_k_quant_blocks(rng, qtype, n_blocks).reshape(ROWS, -1)
        add(f"t.{qtype.name}", packed, qtype, (ROWS, COLS), gguf.quants.dequantize(packed, qtype))

    vec = rng.standard_normal(64).astype(np.float32)
    add("t.vector", vec, Q.F32, vec.shape, vec)
    cube_shape = (2, 3, 64)
    cube = gguf.quants.quantize(rng.standard_normal(cube_shape).astype(np.float32), Q.Q8_0)
    add("t.cube_Q8_0", cube, Q.Q8_0, cube_shape, gguf.quants.dequantize(cube, Q.Q8_0))

    # Metadata of every value type (general.architecture is written by GGUFWriter).
    md = manifest["metadata"]
    md["general.architecture"] = {"type": "string", "value": "tandem-test"}
    scalars = [
        ("test.u8", V.UINT8, 200), ("test.i8", V.INT8, -100), ("test.u16", V.UINT16, 60000),
        ("test.i16", V.INT16, -30000), ("test.u32", V.UINT32, 4000000000),
        ("test.i32", V.INT32, -2000000000), ("test.f32", V.FLOAT32, 0.25),
        ("test.bool", V.BOOL, True), ("test.string", V.STRING, "héllo GGUF"),
        ("test.u64", V.UINT64, 2**63 - 1), ("test.i64", V.INT64, -(2**62)),
        ("test.f64", V.FLOAT64, 3.141592653589793),
    ]
    for key, vtype, value in scalars:
        w.add_key_value(key, value, vtype)
        md[key] = {"type": vtype.name.lower(), "value": value}
    w.add_key_value("test.int_array", [1, -2, 3], V.ARRAY, sub_type=V.INT32)
    md["test.int_array"] = {"type": "array", "element_type": "int32", "value": [1, -2, 3]}
    w.add_key_value("test.string_array", ["a", "", "ccc"], V.ARRAY)
    md["test.string_array"] = {"type": "array", "element_type": "string", "value": ["a", "", "ccc"]}
    nested = [[1, 2], [3], [4, 5, 6]]
    w.add_key_value("test.nested_array", nested, V.ARRAY)
    md["test.nested_array"] = {"type": "array", "element_type": "array", "value": nested}

    # A small byte-level BPE vocabulary.
    tokens = ["<unk>", "<s>", "</s>", "a", "b", "ab", "Ġ", "Ġab", "<|im_start|>"]
    types = [2, 3, 3, 1, 1, 1, 1, 1, 3]
    merges = ["a b", "Ġ ab"]
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(True)
    w.add_chat_template(template)
    manifest["vocab"] = {"model": "gpt2", "pre": "smollm", "tokens": tokens, "token_types": types,
                         "merges": merges, "bos": 1, "eos": 2, "unk": 0, "pad": 2, "add_bos": True,
                         "chat_template": template}

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    (out / "types.json").write_text(json.dumps(manifest, indent=1))


def read_safetensors(path: pathlib.Path):
    """name -> (dtype string, shape, raw bytes) without the safetensors package (it lacks bf16)."""
    blob = path.read_bytes()
    (n,) = struct.unpack_from("<Q", blob, 0)
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        out[name] = (info["dtype"], info["shape"], data[begin:end])
    return out


def bf16_to_f32(raw: bytes, shape) -> np.ndarray:
    u16 = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
    return u16.view(np.float32).reshape(shape)


# convert_hf_to_gguf.py, LlamaModel.permute: interleaves the two rotary halves of every head.
def permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


HF_TO_GGUF = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")
    assert parts[0] == "model" and parts[1] == "layers", hf
    return f"blk.{parts[2]}.{HF_TO_GGUF['.'.join(parts[3:])]}"


def make_tiny_llama(out: pathlib.Path, model_dir: pathlib.Path, matrix_type) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    rope = cfg.get("rope_parameters") or {}
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    name = f"tiny-llama-{matrix_type.name.lower()}.gguf"
    w = gguf.GGUFWriter(str(out / name), "llama")
    w.add_name("tiny-llama")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    for hf, (dtype, shape, raw) in read_safetensors(model_dir / "model.safetensors").items():
        assert dtype == "BF16", (hf, dtype)
        values = bf16_to_f32(raw, shape)
        if hf.endswith("q_proj.weight"):
            values = permute(values, n_head, n_head)
        elif hf.endswith("k_proj.weight"):
            values = permute(values, n_head, n_kv)
        values = np.ascontiguousarray(values)
        if values.ndim == 1 or matrix_type == Q.F32:
            w.add_tensor(gguf_name(hf), values)  # exact: every bf16 value is an f32 value
        else:
            w.add_tensor(gguf_name(hf), gguf.quants.quantize(values, Q.BF16), raw_dtype=Q.BF16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=pathlib.Path)
    parser.add_argument("--tiny-llama", type=pathlib.Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    make_types(args.out, np.random.default_rng(1234))
    if args.tiny_llama:
        for matrix_type in (Q.BF16, Q.F32):
            make_tiny_llama(args.out, args.tiny_llama, matrix_type)


if __name__ == "__main__":
    main()
