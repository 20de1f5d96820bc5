"""`gpt-data tokenizer train --type byte-bpe`: GPT-2 style byte-level BPE on real documents,
checked against the Hugging Face `tokenizers` library and transformers reading the same files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from real_texts import DATA, ODD_TEXTS, real_texts, warc_pages

from common.errors import UserError
from data_pipeline.cli import main as gpt_data
from data_pipeline.tokenize import tokenize
from data_pipeline.tokenizer_train import train_byte_bpe
from data_pipeline.tokenizers import EOD_TOKEN, load_tokenizer, save_hf_tokenizer

VOCAB = 1000


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> Path:
    """Common Crawl documents only: Wikipedia and the WARC pages stay held out."""
    root = tmp_path_factory.mktemp("docs")
    shutil.copy(DATA / "ccnet-head-0091.jsonl.gz", root)
    return root


@pytest.fixture(scope="module")
def trained(docs, tmp_path_factory) -> Path:
    """A 1k byte-level BPE with one extra special, trained through the CLI."""
    out = tmp_path_factory.mktemp("tok") / "cc1k"
    assert gpt_data(["tokenizer", "train", "--type", "byte-bpe", "--input", str(docs), "--output", str(out),
                     "--vocab-size", str(VOCAB), "--special", "<|pad|>"]) == 0
    return out


def test_layout_is_bytes_then_merges_then_specials(trained):
    tok = load_tokenizer(f"byte-bpe:{trained}")
    merges = (trained / "merges.txt").read_text().splitlines()[1:]
    vocab = json.loads((trained / "vocab.json").read_text())
    assert (tok.type, tok.vocab_size, len(vocab)) == ("byte-bpe", VOCAB, VOCAB)
    assert len(merges) == VOCAB - 256 - 2  # GPT-2's arithmetic: bytes + merges + specials
    assert (vocab[EOD_TOKEN], vocab["<|pad|>"], tok.eod_id) == (VOCAB - 2, VOCAB - 1, VOCAB - 2)
    assert sorted(vocab.values()) == list(range(VOCAB))
    from tokenizers.pre_tokenizers import ByteLevel

    assert set(ByteLevel.alphabet()) <= set(vocab)  # every byte has its token: nothing is unknown


def test_round_trip_is_lossless_and_matches_the_tokenizers_library(trained):
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import AutoTokenizer

    tok = load_tokenizer(f"byte-bpe:{trained}")
    library = HFTokenizer.from_file(str(trained / "tokenizer.json"))
    gpt2_style = ByteLevelBPETokenizer(str(trained / "vocab.json"), str(trained / "merges.txt"))
    auto = AutoTokenizer.from_pretrained(trained)
    assert auto.eos_token_id == tok.eod_id and auto.convert_tokens_to_ids("<|pad|>") == VOCAB - 1
    held_out = real_texts("wiki-en-sample.jsonl.gz") + warc_pages()
    for text in held_out + ODD_TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.eod_id not in ids
        if EOD_TOKEN not in text:  # the libraries match specials inside text; our encode never does
            assert ids == library.encode(text).ids == gpt2_style.encode(text).ids == auto(text)["input_ids"]
    assert tok.encode_batch(held_out, num_threads=2) == [tok.encode(t) for t in held_out]
    assert library.encode(EOD_TOKEN).ids == [tok.eod_id]
    # A 1k byte-level vocabulary trained on ~94k characters still beats bytes by > 2x in domain.
    in_domain = real_texts("ccnet-head-0091.jsonl.gz")
    assert sum(len(t.encode()) for t in in_domain) / sum(len(tok.encode(t)) for t in in_domain) > 2.0


def test_training_is_deterministic_and_re_export_keeps_the_files(trained, docs, tmp_path):
    again = train_byte_bpe(docs, tmp_path / "again", vocab_size=VOCAB, specials=["<|pad|>"])
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        assert (again.path / name).read_bytes() == (trained / name).read_bytes()
    save_hf_tokenizer(again, tmp_path / "copy")
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / "copy" / name).read_bytes() == (trained / name).read_bytes()


def test_tokenize_writes_the_librarys_ids_plus_eod(trained, docs, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from tokenizers import Tokenizer as HFTokenizer

    summary = tokenize(docs, tmp_path / "cc", f"byte-bpe:{trained}", quiet=True)
    library = HFTokenizer.from_file(str(trained / "tokenizer.json"))
    eod = json.loads((trained / "vocab.json").read_text())[EOD_TOKEN]
    dataset = IndexedDataset(str(tmp_path / "cc"))
    texts = real_texts("ccnet-head-0091.jsonl.gz")
    assert len(dataset) == len(texts) == summary["documents"]
    for i, text in enumerate(texts):
        assert np.array(dataset[i]).tolist() == library.encode(text).ids + [eod]
    assert dataset.index.dtype == np.uint16
    # The shards record the spec; the trainer and the tools load it back through load_tokenizer.
    spec = json.loads((tmp_path / "cc.stats.json").read_text())["summary"]["tokenizer"]
    assert spec == {"type": "byte-bpe", "path": str(trained), "vocab_size": VOCAB, "eod_id": eod}
    assert load_tokenizer(spec).encode(texts[0]) == library.encode(texts[0]).ids


def test_cli_refusals(trained, docs, cli, tmp_path):
    code, _, err = cli("tokenizer", "train", "--type", "byte-bpe", "--input", docs, "--output", trained,
                       "--vocab-size", 500)
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("tokenizer", "train", "--type", "byte-bpe", "--input", docs, "--output", tmp_path / "a",
                       "--character-coverage", 0.99)
    assert code == 2 and "--character-coverage applies to --type sentencepiece only" in err
    with pytest.raises(UserError, match="below the 256 bytes plus 1 special"):
        train_byte_bpe(docs, tmp_path / "b", vocab_size=256)
    with pytest.raises(UserError, match="support only .* merges"):
        train_byte_bpe(docs, tmp_path / "c", vocab_size=100_000)
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob("c.tmp-*"))


@pytest.mark.parametrize("vocab, merges, message", [
    ({"a": 0, "b": 1, "ab": 2}, "a b\n", "has no <|endoftext|>"),
    ({"a": 0, "b": 2, EOD_TOKEN: 3}, "", "not 0..2"),
    ({"a": 0, "b": 1, EOD_TOKEN: 2}, "a c\n", "not a byte-level BPE vocab.json/merges.txt pair"),
])
def test_broken_byte_bpe_directories_are_user_errors(tmp_path, vocab, merges, message):
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + merges)
    with pytest.raises(UserError, match=message):
        load_tokenizer(f"byte-bpe:{tmp_path}")
