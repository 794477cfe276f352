"""`tandem generate` CLI contract, end to end on the CPU backend.

- `--prompt-ids ... --format json` prints one JSON object on its last line with `token_ids` and
  `finish_reason`;
- the six golden prompts of each reference model through `--prompt-ids-file` (JSON lines, one
  continuous batch) print one line each, in order, equal to HF transformers' greedy goldens
  (read from goldens.safetensors with the safetensors numpy API);
- bad input exits non-zero with a message naming the problem on stderr, and neither a Python-style
  traceback nor an abort/segfault.

The binary comes from $TANDEM_BIN, else build/tandem; test data from $TANDEM_TESTDATA, else
<repo>/../shared/testdata.
"""
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parents[2]
TESTDATA = Path(os.environ.get("TANDEM_TESTDATA", REPO.parent / "shared" / "testdata"))
MODELS = ["tiny-llama", "tiny-llama31"]
COMMON = ["--threads", "2", "--kv-cache-gib", "0.05"]


def tandem_bin():
    path = Path(os.environ.get("TANDEM_BIN", REPO / "build" / "tandem"))
    assert path.exists(), f"tandem binary not found at {path} (set TANDEM_BIN)"
    return str(path)


def model_dir(name):
    path = TESTDATA / "models" / name
    assert (path / "config.json").exists(), f"missing test model {path} (set TANDEM_TESTDATA)"
    return path


def generate(*args, timeout=300):
    proc = subprocess.run([tandem_bin(), "generate", *COMMON, *[str(a) for a in args]],
                          capture_output=True, timeout=timeout)
    return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")


def goldens(name):
    return load_file(str(model_dir(name) / "goldens.safetensors"))


def vocab_size(name):
    return json.loads((model_dir(name) / "config.json").read_text())["vocab_size"]


def assert_clean_failure(rc, stderr, *needles):
    """Non-zero exit, no signal, no traceback, and every needle (case-insensitive) on stderr."""
    assert rc > 0, f"expected a non-zero exit code, got {rc}; stderr:\n{stderr}"
    assert rc not in (134, 139), f"aborted/crashed (exit {rc}); stderr:\n{stderr}"
    assert "Traceback" not in stderr
    assert "check failed" not in stderr.lower() and "terminate called" not in stderr, stderr
    for needle in needles:
        assert needle.lower() in stderr.lower(), f"stderr lacks {needle!r}:\n{stderr}"


# --- the contract ----------------------------------------------------------------------------------

def test_json_output_last_line():
    rc, out, err = generate("--model", model_dir("tiny-llama"), "--prompt-ids", "1,2,3",
                            "--max-tokens", 5, "--temperature", 0, "--ignore-eos", "--format", "json")
    assert rc == 0, err
    lines = [l for l in out.splitlines() if l.strip()]
    assert lines, "no output"
    obj = json.loads(lines[-1])
    assert isinstance(obj, dict)
    assert obj["finish_reason"] == "length"
    ids = obj["token_ids"]
    assert len(ids) == 5
    assert all(isinstance(t, int) and 0 <= t < vocab_size("tiny-llama") for t in ids)


def test_greedy_is_deterministic_and_respects_max_tokens():
    args = ["--model", model_dir("tiny-llama31"), "--prompt-ids", "5,6,7,8",
            "--temperature", 0, "--ignore-eos", "--format", "json"]
    rc1, out1, err1 = generate(*args, "--max-tokens", 7)
    rc2, out2, err2 = generate(*args, "--max-tokens", 3)
    assert rc1 == 0 and rc2 == 0, err1 + err2
    long_ids = json.loads(out1.splitlines()[-1])["token_ids"]
    short_ids = json.loads(out2.splitlines()[-1])["token_ids"]
    assert len(long_ids) == 7 and len(short_ids) == 3
    assert long_ids[:3] == short_ids


def test_no_cuda_graphs_is_accepted_and_changes_nothing_on_the_cpu():
    args = ["--model", model_dir("tiny-llama"), "--prompt-ids", "1,2,3", "--max-tokens", 4,
            "--temperature", 0, "--ignore-eos", "--format", "json"]
    rc1, out1, err1 = generate(*args)
    rc2, out2, err2 = generate(*args, "--no-cuda-graphs")
    assert rc1 == 0 and rc2 == 0, err1 + err2
    assert json.loads(out1.splitlines()[-1])["token_ids"] == json.loads(out2.splitlines()[-1])["token_ids"]


@pytest.mark.parametrize("name", MODELS)
def test_golden_prompts_file_matches_greedy_goldens(name, tmp_path):
    g = goldens(name)
    n = 0
    while f"p{n}.input_ids" in g:
        n += 1
    assert n == 6, f"expected 6 golden prompts, found {n}"
    prompts = [g[f"p{i}.input_ids"].astype(np.int64).tolist() for i in range(n)]
    expected = [g[f"p{i}.greedy_ids"].astype(np.int64).tolist() for i in range(n)]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt_ids": p}) + "\n" for p in prompts))
    rc, out, err = generate("--model", model_dir(name), "--prompt-ids-file", path,
                            "--max-tokens", len(expected[0]), "--temperature", 0, "--ignore-eos",
                            "--format", "json")
    assert rc == 0, err
    lines = [json.loads(l) for l in out.splitlines() if l.strip()]
    assert len(lines) == n
    for i, (line, want) in enumerate(zip(lines, expected)):
        assert line["index"] == i, f"line {i} is out of order: {line}"
        assert line["num_prompt_tokens"] == len(prompts[i])
        assert line["finish_reason"] == "length"
        assert line["token_ids"] == want, f"prompt p{i} (length {len(prompts[i])})"


# --- bad input ---------------------------------------------------------------------------------

def run_ids(*extra, ids="1,2,3", model=None):
    return generate("--model", model or model_dir("tiny-llama"), "--prompt-ids", ids,
                    "--max-tokens", 2, "--temperature", 0, "--format", "json", *extra)


def test_token_id_beyond_vocab():
    vocab = vocab_size("tiny-llama")
    rc, out, err = run_ids(ids=f"1,{vocab},3")
    assert_clean_failure(rc, err, str(vocab), "vocab")


def test_non_integer_token_id():
    rc, out, err = run_ids(ids="1,two,3")
    assert_clean_failure(rc, err, "two", "integer")


def test_non_integer_token_id_in_prompt_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt_ids": [1, 2]}\n{"prompt_ids": [1, 2.5]}\n')
    rc, out, err = generate("--model", model_dir("tiny-llama"), "--prompt-ids-file", path,
                            "--max-tokens", 2, "--format", "json")
    assert_clean_failure(rc, err, "p.jsonl:2", "integer")


def test_nan_temperature():
    rc, out, err = generate("--model", model_dir("tiny-llama"), "--prompt-ids", "1,2,3",
                            "--max-tokens", 2, "--temperature", "nan", "--format", "json")
    assert_clean_failure(rc, err, "temperature")


def test_max_tokens_zero():
    rc, out, err = generate("--model", model_dir("tiny-llama"), "--prompt-ids", "1,2,3",
                            "--max-tokens", 0, "--temperature", 0, "--format", "json")
    assert_clean_failure(rc, err, "max_tokens")


def test_missing_model_dir(tmp_path):
    missing = tmp_path / "no-such-model"
    rc, out, err = run_ids(model=missing)
    assert_clean_failure(rc, err, str(missing))


def copy_model(tmp_path, name="tiny-llama"):
    dst = tmp_path / name
    dst.mkdir()
    src = model_dir(name)
    for f in ("config.json", "generation_config.json"):
        shutil.copy(src / f, dst / f)
    return dst


def test_truncated_safetensors(tmp_path):
    dst = copy_model(tmp_path)
    data = (model_dir("tiny-llama") / "model.safetensors").read_bytes()
    (dst / "model.safetensors").write_bytes(data[: len(data) // 2])
    rc, out, err = run_ids(model=dst)
    assert_clean_failure(rc, err, "model.safetensors", "truncated")


def test_corrupt_safetensors_header(tmp_path):
    dst = copy_model(tmp_path)
    data = bytearray((model_dir("tiny-llama") / "model.safetensors").read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    # Break the JSON: overwrite its opening brace and a stretch after it.
    data[8:8 + 16] = b"#" * 16
    assert header_len > 16
    (dst / "model.safetensors").write_bytes(bytes(data))
    rc, out, err = run_ids(model=dst)
    assert_clean_failure(rc, err, "model.safetensors", "header")


def test_header_length_past_end_of_file(tmp_path):
    dst = copy_model(tmp_path)
    data = bytearray((model_dir("tiny-llama") / "model.safetensors").read_bytes())
    data[:8] = (len(data) * 4).to_bytes(8, "little")
    (dst / "model.safetensors").write_bytes(bytes(data))
    rc, out, err = run_ids(model=dst)
    assert_clean_failure(rc, err, "model.safetensors", "header length")


def test_unknown_architecture(tmp_path):
    dst = copy_model(tmp_path)
    shutil.copy(model_dir("tiny-llama") / "model.safetensors", dst / "model.safetensors")
    config = json.loads((dst / "config.json").read_text())
    config["architectures"] = ["FrobnicatorForCausalLM"]
    (dst / "config.json").write_text(json.dumps(config))
    rc, out, err = run_ids(model=dst)
    assert_clean_failure(rc, err, "FrobnicatorForCausalLM")


def test_control_copied_model_runs(tmp_path):
    """The copies above fail because of what was broken, not because of the copying."""
    dst = copy_model(tmp_path)
    shutil.copy(model_dir("tiny-llama") / "model.safetensors", dst / "model.safetensors")
    rc, out, err = run_ids(model=dst)
    assert rc == 0, err
    assert len(json.loads(out.splitlines()[-1])["token_ids"]) == 2


# --- model sources and flags ------------------------------------------------------------------------
def test_dummy_weights_instantiate_a_bare_config(tmp_path):
    config = tmp_path / "config.json"
    config.write_text((model_dir("tiny-llama") / "config.json").read_text())
    rc, out, err = generate("--model", config, "--dummy-weights", "--prompt-ids", "1,2,3",
                            "--max-tokens", 3, "--temperature", 0, "--ignore-eos", "--format", "json")
    assert rc == 0, err
    assert len(json.loads(out.strip().splitlines()[-1])["token_ids"]) == 3


def test_bare_config_without_dummy_weights_says_what_to_add(tmp_path):
    config = tmp_path / "config.json"
    config.write_text((model_dir("tiny-llama") / "config.json").read_text())
    rc, out, err = run_ids(model=config)
    assert_clean_failure(rc, err, "--dummy-weights")


def test_dummy_weights_refuse_a_gguf_file(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    rc, out, err = run_ids("--dummy-weights", model=gguf)
    assert_clean_failure(rc, err, "config.json")


def test_unknown_backend():
    rc, out, err = run_ids("--backend", "tpu")
    assert_clean_failure(rc, err, "--backend", "tpu")


@pytest.mark.parametrize("sources", [[], ["--prompt-ids", "1,2", "--prompt", "hi"]])
def test_exactly_one_prompt_source(sources):
    rc, out, err = generate("--model", model_dir("tiny-llama"), *sources, "--max-tokens", 2)
    assert_clean_failure(rc, err, "exactly one of")
