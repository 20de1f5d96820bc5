"""The tokenizer interface: GPT-2 BPE from the bundled file and its Hugging Face files, sentencepiece
training, spec loading."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from real_texts import DATA, ODD_TEXTS, real_texts, warc_pages

from common.errors import UserError
from data_pipeline.tokenizer_train import train_tokenizer
from data_pipeline.tokenizers import EOD_TOKEN, GPT2_BPE_FILE, load_tokenizer, save_hf_tokenizer


def test_gpt2_matches_published_ids():
    tok = load_tokenizer("gpt2")
    # Ids as published for GPT-2 (OpenAI encoder.json / HF "gpt2"): "Hello"=15496, " world"=995,
    # " the"=262, "<|endoftext|>"=50256, vocabulary 50257.
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the") == [262]
    assert (tok.vocab_size, tok.eod_id, tok.name) == (50257, 50256, "gpt2")
    assert tok.dtype.__name__ == "uint16"
    assert tok.spec() == {"type": "gpt2", "path": None, "vocab_size": 50257, "eod_id": 50256}


def test_gpt2_round_trips_real_text_and_never_emits_eod_from_text():
    tok = load_tokenizer("gpt2")
    texts = real_texts("ccnet-head-0091.jsonl.gz") + real_texts("wiki-en-sample.jsonl.gz")
    batch = tok.encode_batch(texts, num_threads=2)
    assert batch == [tok.encode(t) for t in texts]
    for text, ids in zip(texts, batch):
        assert tok.decode(ids) == text
        assert tok.eod_id not in ids
    literal = f"a document that mentions {EOD_TOKEN} in its text"
    assert tok.eod_id not in tok.encode(literal)
    assert tok.decode(tok.encode(literal)) == literal
    # GPT-2 BPE compresses English prose to ~4 characters per token.
    chars = sum(map(len, texts))
    tokens = sum(map(len, batch))
    assert 3.0 < chars / tokens < 5.5


def test_load_tokenizer_spec_forms(tmp_path):
    by_path = load_tokenizer(str(GPT2_BPE_FILE))
    by_prefix = load_tokenizer(f"gpt2:{GPT2_BPE_FILE}")
    blend_spec = load_tokenizer({"type": "gpt2", "path": None, "vocab_size": 50257, "eod_id": 50256})
    for tok in (by_path, by_prefix, blend_spec):
        assert tok.encode("Hello world") == [15496, 995]
    copy = tmp_path / "my.tiktoken"
    copy.write_bytes(GPT2_BPE_FILE.read_bytes())
    relative = load_tokenizer({"type": "gpt2", "path": "my.tiktoken", "vocab_size": 50257, "eod_id": 50256},
                              base_dir=tmp_path)
    assert relative.path == copy and relative.spec(relative_to=tmp_path)["path"] == "my.tiktoken"


@pytest.mark.parametrize("spec, message", [
    ("bpe", "unknown tokenizer"),
    ("sentencepiece", "needs a model path"),
    ("sentencepiece:/nonexistent/x.model", "not found"),
    ("byte-bpe", "needs its directory"),
    ("byte-bpe:/nonexistent", "lacks vocab.json and merges.txt"),
    ({"type": "byte-bpe", "path": str(GPT2_BPE_FILE.parent), "vocab_size": 1, "eod_id": 0}, "lacks vocab.json"),
    ({"type": "gpt2", "vocab_size": 32000, "eod_id": 50256}, "vocab_size is 32000"),
    ({"type": "wordpiece", "vocab_size": 1, "eod_id": 0}, "tokenizer.type"),
])
def test_load_tokenizer_rejects_bad_specs(spec, message):
    with pytest.raises(UserError, match=message):
        load_tokenizer(spec)


def test_corrupt_tiktoken_file_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("not-base64 rank\n")
    with pytest.raises(UserError, match="not a tiktoken BPE file"):
        load_tokenizer(str(bad))


def write_extended_gpt2(path: Path, texts: list[str], vocab_size: int) -> None:
    """GPT-2's ranks extended to `vocab_size` - 1 tokens, the last ones real merges from `texts`.

    Unreachable filler tokens take the ids right after GPT-2's; then come merges of
    adjacent token pairs seen in `texts` (inside one pre-token, so tiktoken's BPE really
    produces them) with ids above 65535: a vocabulary past uint16 exercised by real text.
    """
    gpt2 = load_tokenizer("gpt2")
    lines = GPT2_BPE_FILE.read_text().splitlines()
    known = {base64.b64decode(line.split()[0]) for line in lines}
    merges: list[bytes] = []
    for text in texts:
        pieces = [gpt2._encoding.decode_single_token_bytes(i) for i in gpt2.encode(text)]
        for a, b in zip(pieces, pieces[1:]):
            if a + b not in known and not b.startswith((b" ", b"\n")):
                known.add(a + b)
                merges.append(a + b)
    merges = merges[:1000]
    fillers = [b"\xff\xfe" + i.to_bytes(4, "big") for i in range(vocab_size - 1 - len(lines) - len(merges))]
    new = fillers + merges
    path.write_text("\n".join(lines + [f"{base64.b64encode(t).decode()} {len(lines) + i}"
                                        for i, t in enumerate(new)]) + "\n")


def test_vocabulary_past_uint16_uses_int32(tmp_path):
    texts = real_texts("wiki-en-sample.jsonl.gz")
    write_extended_gpt2(tmp_path / "big.tiktoken", texts, vocab_size=70000)
    tok = load_tokenizer(str(tmp_path / "big.tiktoken"))
    assert (tok.vocab_size, tok.eod_id) == (70000, 69999)
    assert tok.dtype.__name__ == "int32"
    ids = tok.encode(texts[0])
    assert max(ids) > 65535
    assert tok.decode(ids) == texts[0]


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("spm")
    (root / "docs").mkdir()
    (root / "docs" / "ccnet.jsonl.gz").write_bytes((DATA / "ccnet-head-0091.jsonl.gz").read_bytes())
    return train_tokenizer(root / "docs", root / "cc1k", vocab_size=1000, specials=["<|pad|>"])


def test_sentencepiece_training_is_lossless_with_byte_fallback(sentencepiece_model):
    tok = sentencepiece_model
    assert tok.vocab_size == 1000 and tok.type == "sentencepiece"
    assert tok.eod_id != tok._sp.unk_id() and tok._sp.is_control(tok.eod_id)
    assert tok._sp.is_control(tok._sp.piece_to_id("<|pad|>"))
    assert sum(tok._sp.is_byte(i) for i in range(tok.vocab_size)) == 256
    # Held out (trained on Common Crawl only): Wikipedia plus characters never seen.
    held_out = real_texts("wiki-en-sample.jsonl.gz") + ["emoji 🎉, 日本語, tabs\tand\n\nblank lines  ", EOD_TOKEN]
    for text in held_out:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.eod_id not in ids
    assert tok._sp.unk_id() not in tok.encode("🎉 日本語")
    # A 1k BPE vocabulary trained on ~94k characters still beats bytes by > 2x in domain.
    in_domain = real_texts("ccnet-head-0091.jsonl.gz")
    assert sum(len(t.encode()) for t in in_domain) / sum(len(tok.encode(t)) for t in in_domain) > 2.0
    loaded = load_tokenizer(f"sentencepiece:{tok.path}")
    assert loaded.encode(held_out[0]) == tok.encode(held_out[0])
    assert load_tokenizer(tok.spec()).eod_id == tok.eod_id


def test_sentencepiece_training_is_deterministic(sentencepiece_model, tmp_path):
    again = train_tokenizer(Path(sentencepiece_model.path).parent / "docs", tmp_path / "again",
                            vocab_size=1000, specials=["<|pad|>"])
    pieces = [sentencepiece_model._sp.id_to_piece(i) for i in range(1000)]
    assert pieces == [again._sp.id_to_piece(i) for i in range(1000)]


def test_tokenizer_train_cli_errors(tmp_path):
    from data_pipeline.cli import main

    assert main(["tokenizer", "train", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "m")]) == 2
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tiny.jsonl").write_text(json.dumps({"id": "a", "text": "tiny corpus"}) + "\n")
    # A vocabulary far larger than the text supports is refused with sentencepiece's reason.
    with pytest.raises(UserError, match="sentencepiece training failed"):
        train_tokenizer(docs, tmp_path / "m", vocab_size=5000)


@pytest.fixture(scope="module")
def gpt2_hf_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpt2-hf")
    written = save_hf_tokenizer(load_tokenizer("gpt2"), directory)
    assert sorted(p.name for p in written) == sorted(["vocab.json", "merges.txt", "tokenizer.json",
                                                       "tokenizer_config.json", "special_tokens_map.json"])
    return directory


def test_gpt2_hf_files_reconstruct_gpt2s_vocabulary_and_merges(gpt2_hf_dir):
    vocab = json.loads((gpt2_hf_dir / "vocab.json").read_text())
    merges = (gpt2_hf_dir / "merges.txt").read_text().splitlines()
    # As in OpenAI's encoder.json / vocab.bpe: 50257 entries, 50000 merges in rank order,
    # byte tokens in the byte-to-unicode alphabet ("Ġ" is the space byte).
    assert len(vocab) == 50257 and vocab[EOD_TOKEN] == 50256
    assert (vocab["!"], vocab["Ġ"], vocab["Hello"], vocab["Ġworld"], vocab["Ġthe"]) == (0, 220, 15496, 995, 262)
    assert merges[0] == "#version: 0.2" and len(merges) == 50001
    assert merges[1:8] == ["Ġ t", "Ġ a", "h e", "i n", "r e", "o n", "Ġt he"]


def test_gpt2_hf_files_give_tiktokens_ids(gpt2_hf_dir):
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import AutoTokenizer, GPT2TokenizerFast

    gpt2 = load_tokenizer("gpt2")
    library = HFTokenizer.from_file(str(gpt2_hf_dir / "tokenizer.json"))
    fast = GPT2TokenizerFast.from_pretrained(gpt2_hf_dir)
    auto = AutoTokenizer.from_pretrained(gpt2_hf_dir)
    ours = load_tokenizer(f"byte-bpe:{gpt2_hf_dir}")
    assert (fast.eos_token_id, auto.eos_token_id, ours.eod_id, ours.vocab_size) == (50256, 50256, 50256, 50257)
    texts = real_texts("ccnet-head-0091.jsonl.gz") + real_texts("wiki-en-sample.jsonl.gz") + warc_pages()
    texts += [t for t in ODD_TEXTS if EOD_TOKEN not in t]  # HF tokenizers match specials inside text
    for text in texts:
        ids = gpt2.encode(text)
        assert library.encode(text).ids == ids
        assert fast.encode(text) == ids
        assert auto(text)["input_ids"] == ids
        assert ours.encode(text) == ids
        assert fast.decode(ids) == library.decode(ids) == ours.decode(ids) == gpt2.decode(ids)
    for text in ODD_TEXTS + real_texts("wiki-en-sample.jsonl.gz")[:2]:
        assert ours.decode(ours.encode(text)) == text and ours.encode(text) == gpt2.encode(text)
    assert ours.encode_batch(texts, num_threads=2) == gpt2.encode_batch(texts)


def test_hf_files_refuse_sentencepiece(sentencepiece_model, tmp_path):
    with pytest.raises(UserError, match="only for byte-level BPE"):
        save_hf_tokenizer(sentencepiece_model, tmp_path)
