"""Randomized differential test: `tandem tokenize` against HF `tokenizers` (same tokenizer.json).

Seeded generated Unicode text (mixed scripts, emoji, whitespace runs, digits, contractions,
combining marks, special-token strings) is encoded by both; random id lists are decoded by both.
Vocabularies: gpt2, llama3, qwen2 from shared/testdata, plus two SentencePiece-style BPE
tokenizers (Llama-2 legacy normalizer+decoder, and Metaspace) built here with `tokenizers`.

The binary comes from $TANDEM_BIN, else build/tandem.
"""
import json
import os
import random
import subprocess
import tarfile
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

REPO = Path(__file__).resolve().parents[2]
TESTDATA = Path(os.environ.get("TANDEM_TESTDATA_DIR", REPO.parent / "shared" / "testdata"))
N_TEXTS = 700
N_ID_LISTS = 300


def tandem_bin():
    path = Path(os.environ.get("TANDEM_BIN", REPO / "build" / "tandem"))
    assert path.exists(), f"tandem binary not found at {path} (set TANDEM_BIN)"
    return str(path)


@pytest.fixture(scope="session")
def vocab_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    with tarfile.open(TESTDATA / "tokenizers.tar.gz") as tar:
        tar.extractall(out)
    return out / "tokenizers"


def run_tandem(model_dir, lines, *flags):
    inp = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    proc = subprocess.run([tandem_bin(), "tokenize", "--model", str(model_dir), *flags],
                          input=inp.encode(), capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    out = [json.loads(l) for l in proc.stdout.decode().split("\n") if l]
    assert len(out) == len(lines)
    return out


SCRIPTS = [
    "hello world The quick brown fox Jumps OVER lazy dogs",
    "Привет мир съешь же ещё этих мягких",
    "你好世界 我们 今天 天气 很好 東京 日本語",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "안녕하세요 세계",
    "γειά σου κόσμε",
    "ñandú café naïve façade Ærøskøbing straße",
]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "❤️", "🚀", "🤖", "✨"]
WHITESPACE = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u3000", "\u2009", "    \n"]
PUNCT = [".", ",", "!?", "...", "'s", "'LL", "'Ve", "'t", "'D", "—", "«»", "(", ")", "[]", "{}", "$", "%",
         "#", "@", "&&", "->", "::", "\"", "`", "~", "'", "'ſ"]
COMBINING = ["e\u0301", "a\u0308", "o\u0302\u0323", "\u1100\u1161", "n\u0303", "\u212b", "\uff21\uff22"]


def random_text(rng, specials):
    parts = []
    for _ in range(rng.randint(1, 12)):
        kind = rng.random()
        if kind < 0.3:
            words = rng.choice(SCRIPTS).split()
            parts.append(rng.choice(words))
        elif kind < 0.4:
            parts.append(rng.choice(EMOJI))
        elif kind < 0.55:
            parts.append(rng.choice(WHITESPACE))
        elif kind < 0.65:
            parts.append(str(rng.randint(0, 10 ** rng.randint(1, 9))))
        elif kind < 0.75:
            parts.append(rng.choice(PUNCT))
        elif kind < 0.8:
            parts.append(rng.choice(COMBINING))
        elif kind < 0.85 and specials:
            parts.append(rng.choice(specials))
        else:
            cp = rng.choice([rng.randint(0x20, 0x7e), rng.randint(0xa0, 0x2fff), rng.randint(0x3000, 0xd7ff),
                             rng.randint(0xe000, 0xfffd), rng.randint(0x10000, 0x1faff)])
            parts.append(chr(cp))
    return "".join(parts)


def specials_of(tok):
    return [t.content for t in tok.get_added_tokens_decoder().values()][:20]


def check_vocab(model_dir, hf, seed):
    rng = random.Random(seed)
    specials = specials_of(hf)
    texts = [random_text(rng, specials) for _ in range(N_TEXTS)]
    got = run_tandem(model_dir, [{"text": t} for t in texts])
    bad = [(t, g, hf.encode(t, add_special_tokens=False).ids) for t, g in zip(texts, got)
           if g.get("ids") != hf.encode(t, add_special_tokens=False).ids]
    assert not bad, f"{len(bad)}/{len(texts)} encode mismatches, first: {bad[0]!r}"

    # Untrusted input: special-token strings are plain text.
    hf.encode_special_tokens = True
    try:
        got = run_tandem(model_dir, [{"text": t} for t in texts[:200]], "--no-parse-special")
        bad = [t for t, g in zip(texts, got) if g["ids"] != hf.encode(t, add_special_tokens=False).ids]
    finally:
        hf.encode_special_tokens = False
    assert not bad, f"{len(bad)} --no-parse-special mismatches, first: {bad[0]!r}"

    size = hf.get_vocab_size(with_added_tokens=True)
    id_lists = []
    for _ in range(N_ID_LISTS):
        n = rng.randint(1, 40)
        id_lists.append([rng.randrange(size) if rng.random() < 0.5 else rng.randrange(min(size, 600))
                         for _ in range(n)])
    for skip in (False, True):
        flags = ["--decode"] + (["--skip-special-tokens"] if skip else [])
        got = run_tandem(model_dir, [{"ids": ids} for ids in id_lists], *flags)
        bad = [(ids, g, hf.decode(ids, skip_special_tokens=skip)) for ids, g in zip(id_lists, got)
               if g.get("text") != hf.decode(ids, skip_special_tokens=skip)]
        assert not bad, f"{len(bad)} decode mismatches (skip={skip}), first: {bad[0]!r}"


@pytest.mark.parametrize("name,seed", [("gpt2", 1), ("llama3", 2), ("qwen2", 3)])
def test_real_vocabularies(vocab_dir, name, seed):
    hf = Tokenizer.from_file(str(vocab_dir / name / "tokenizer.json"))
    check_vocab(vocab_dir / name, hf, seed)


def build_sentencepiece_style(vocab_dir, tmp_path, metaspace):
    """A Llama-2-style BPE (byte_fallback, <0xNN> tokens) trained on the vectors' texts."""
    corpus = [json.loads(l)["text"] for l in open(vocab_dir / "gpt2" / "vectors.jsonl", encoding="utf-8")]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if metaspace:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    else:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        name = f"<0x{b:02X}>"
        if name not in vocab:
            vocab[name] = len(vocab)
    out = tmp_path / ("metaspace" if metaspace else "llama2")
    out.mkdir()
    (out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return out, Tokenizer.from_file(str(out / "tokenizer.json"))


@pytest.mark.parametrize("metaspace", [False, True])
def test_sentencepiece_style(vocab_dir, tmp_path, metaspace):
    model_dir, hf = build_sentencepiece_style(vocab_dir, tmp_path, metaspace)
    check_vocab(model_dir, hf, 10 + int(metaspace))
