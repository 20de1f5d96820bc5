"""gpt-generate with a byte-level BPE trained by `gpt-data tokenizer train --type byte-bpe`:
the tool's --tokenizer byte-bpe:DIR encodes and decodes as the `tokenizers` library does."""
import gzip
import json
from pathlib import Path

import torch

from data_pipeline.tokenizer_train import train_byte_bpe
from tools.generate import main as gpt_generate
from tools.model_source import save_trunk
from training.config import ModelConfig
from training.generation import Sampling, generate
from training.model import GPT

DATA = Path(__file__).resolve().parents[1] / "data"


@torch.no_grad()
def test_gpt_generate_takes_a_byte_bpe_tokenizer(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer

    tokenizer = train_byte_bpe(DATA / "ccnet-head-0091.jsonl.gz", tmp_path / "bpe", vocab_size=600)
    library = HFTokenizer.from_file(str(tmp_path / "bpe" / "tokenizer.json"))
    model = GPT(ModelConfig(arch="gpt2", n_layers=2, d_model=32, n_heads=4, seq_length=96, vocab_size=600,
                            dropout=0.0), 5).eval()
    with gzip.open(DATA / "wiki-en-sample.jsonl.gz", "rt") as f:
        prompt = json.loads(f.readline())["text"][:100]
    assert gpt_generate(["--checkpoint", str(save_trunk(model, tmp_path / "ckpt")), "--prompt", prompt,
                         "--tokenizer", f"byte-bpe:{tokenizer.path}", "--greedy", "--max-new-tokens", "12",
                         "--output", str(tmp_path / "out.json")]) == 0
    result = json.loads((tmp_path / "out.json").read_text())
    expected = generate(model, [library.encode(prompt).ids], 12, Sampling(greedy=True), eod_id=tokenizer.eod_id)[0]
    assert result["tokens"] == expected and len(expected) > 0
    assert result["text"] == library.decode(expected, skip_special_tokens=False)
