"""gpt-convert against transformers' own GPT-2 (randomly initialised, nothing downloaded), on real text."""
import gzip
import json
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from common.errors import UserError
from data_pipeline.tokenizers import load_tokenizer
from tests.training.crafted import CreatesFile
from tools.convert import describe, from_hf, main, reshard, to_hf
from training.checkpoint_files import ShardReader, read_manifest
from training.consolidated import load_gpt

WIKI = Path(__file__).resolve().parents[1] / "data" / "wiki-en-sample.jsonl.gz"


def real_tokens(vocab: int, length: int) -> torch.Tensor:
    """GPT-2 BPE ids of real Wikipedia text (folded into the vocabulary when it is smaller)."""
    with gzip.open(WIKI, "rt") as f:
        text = " ".join(json.loads(line)["text"] for _, line in zip(range(3), f))
    ids = load_tokenizer("gpt2").encode(text)[: 2 * length]
    return (torch.tensor(ids) % vocab).view(2, length)


def random_gpt2(path: Path, vocab: int, d: int, layers: int, heads: int, positions: int = 64) -> GPT2LMHeadModel:
    torch.manual_seed(vocab)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=d, n_layer=layers,
                                       n_head=heads, bos_token_id=0, eos_token_id=0)).eval()
    with torch.no_grad():  # GPT-2 initialises LayerNorms to 1/0 and biases to 0: make every tensor count
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    return model


@pytest.mark.parametrize("vocab, d, layers, heads, tp, pp", [
    pytest.param(50257, 64, 2, 4, 1, 1, id="gpt2-vocab-tp1-pp1"),
    pytest.param(1001, 48, 3, 4, 2, 2, id="odd-vocab-tp2-pp2"),
    pytest.param(517, 96, 4, 6, 3, 4, id="odd-vocab-tp3-pp4"),
])
def test_from_hf_and_back_keeps_logits(tmp_path, vocab, d, layers, heads, tp, pp):
    hf = random_gpt2(tmp_path / "hf", vocab, d, layers, heads)
    from_hf(str(tmp_path / "hf"), str(tmp_path / "ours"), tp, pp)
    manifest = read_manifest(tmp_path / "ours")
    assert manifest["layout"]["tp"] == tp and manifest["layout"]["pp"] == pp
    assert manifest["padded_vocab_size"] % (128 * tp) == 0 and manifest["padded_vocab_size"] >= vocab
    tokens = real_tokens(vocab, 64)
    ours, cfg = load_gpt(tmp_path / "ours")
    with torch.no_grad():
        reference = hf(tokens).logits
        logits = ours(tokens)
    assert logits.shape[-1] == manifest["padded_vocab_size"]
    assert (logits[..., :vocab] - reference).abs().max() < 1e-4
    assert not ours.token_embedding.weight[vocab:].any()  # zero padding rows, as Megatron pads ...
    assert (logits[..., vocab:] == torch.finfo(logits.dtype).min).all()  # ... masked out of the softmax:
    assert (logits.log_softmax(-1)[..., :vocab] - reference.log_softmax(-1)).abs().max() < 1e-4  # GPT-2's

    to_hf(str(tmp_path / "ours"), str(tmp_path / "back"))
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    assert back.config.vocab_size == vocab
    with torch.no_grad():
        assert (back(tokens).logits - reference).abs().max() < 1e-4


def test_reshard_and_consolidate_keep_weights_and_repad_the_vocabulary(tmp_path):
    """517 ids are 640 rows at TP1 and 768 at TP2 (multiples of 128 x TP): padded up and cut back, same model."""
    random_gpt2(tmp_path / "hf", 517, 48, 3, 4)
    from_hf(str(tmp_path / "hf"), str(tmp_path / "tp1"), 1, 1)
    reshard(str(tmp_path / "tp1"), str(tmp_path / "tp2-pp3"), 2, 3)
    assert main(["consolidate", "--input", str(tmp_path / "tp2-pp3"), "--output", str(tmp_path / "one")]) == 0
    manifests = [read_manifest(tmp_path / name) for name in ("tp1", "tp2-pp3", "one")]
    assert [m["padded_vocab_size"] for m in manifests] == [640, 768, 640]
    assert len(manifests[2]["files"]) == 1 and manifests[2]["layout"]["tp"] == 1
    tokens = real_tokens(517, 32)
    with torch.no_grad():
        tp1, tp2, one = (load_gpt(tmp_path / name)[0](tokens) for name in ("tp1", "tp2-pp3", "one"))
    assert torch.equal(tp1, one)
    torch.testing.assert_close(tp2.log_softmax(-1)[..., :517], tp1.log_softmax(-1)[..., :517], rtol=0, atol=1e-6)
    reader = ShardReader(manifests[1])  # what reshard reads from: each weight on access, TP-merged
    lazy = reader.lazy_state()
    assert list(lazy) == reader.names() and len(lazy) == len(reader.names()) and "no.such.weight" not in lazy
    assert all(torch.equal(lazy[name], tensor) for name, tensor in reader.state_dict().items())


def test_inspect_and_damaged_checkpoints(tmp_path, capsys):
    random_gpt2(tmp_path / "hf", 1001, 48, 2, 4)
    from_hf(str(tmp_path / "hf"), str(tmp_path / "ours"), 2, 2)
    text = describe(str(tmp_path / "ours"))
    assert "TP 2 x PP 2" in text and "vocab 1001 (padded 1024)" in text and "weights only" in text
    n_params = sum(p.numel() for p in GPT2LMHeadModel.from_pretrained(tmp_path / "hf").parameters())
    assert f"{n_params + (1024 - 1001) * 48:,}" in text  # + the padded embedding rows

    root = Path(read_manifest(tmp_path / "ours")["path"])
    shard = sorted((root / "state").glob("*.pt"))[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match=f"{shard.name} fails its checksum"):
        load_gpt(tmp_path / "ours")
    assert main(["inspect", "--input", str(tmp_path / "ours")]) == 2
    assert "fails its checksum" in capsys.readouterr().err
    shard.unlink()
    with pytest.raises(UserError, match=f"{shard.name} is missing"):
        describe(str(tmp_path / "ours"))
    (root / "manifest.json").unlink()
    with pytest.raises(UserError, match="incomplete"):
        describe(str(root))


def test_to_hf_refuses_what_gpt2_cannot_express(tmp_path):
    random_gpt2(tmp_path / "hf", 1001, 48, 2, 4)
    from_hf(str(tmp_path / "hf"), str(tmp_path / "ours"), 1, 1)
    manifest_path = Path(read_manifest(tmp_path / "ours")["path"]) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["config"]["model"]["sparse_every"] = 2
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="sparse attention"):
        to_hf(str(tmp_path / "ours"), str(tmp_path / "out"))


def test_from_hf_reads_tensors_and_nothing_else(tmp_path, capsys):
    """A pickled pytorch_model.bin loads as tensors; one that would run code when unpickled is refused in one line
    and the code never runs; an output directory that holds a checkpoint is not overwritten."""
    model = random_gpt2(tmp_path / "hf", 1001, 48, 2, 4)
    pickled = tmp_path / "bin"
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    from_hf(str(pickled), str(tmp_path / "ours"), 1, 1)
    tokens = real_tokens(1001, 32)
    with torch.no_grad():
        assert (load_gpt(tmp_path / "ours")[0](tokens)[..., :1001] - model(tokens).logits).abs().max() < 1e-4
    capsys.readouterr()
    assert main(["from-hf", "--input", str(tmp_path / "hf"), "--output", str(tmp_path / "ours")]) == 2
    assert capsys.readouterr().err.strip() == (f"gpt-convert: error: {tmp_path / 'ours'} already holds a checkpoint; "
                                               "not overwriting it (write to a new directory)")  # before reading
    marker = tmp_path / "marker"
    torch.save({"transformer.wte.weight": CreatesFile(marker)}, pickled / "pytorch_model.bin")
    assert main(["from-hf", "--input", str(pickled), "--output", str(tmp_path / "crafted")]) == 2
    err = capsys.readouterr().err  # after transformers' progress bar
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        f"gpt-convert: error: from-hf: the weights in {pickled} hold more than tensors (unpickling them would run "
        "code); refusing them")
    assert not marker.exists() and not (tmp_path / "crafted").exists()


def test_from_hf_refuses_other_models_and_incomplete_weights(tmp_path, capfd):
    """A GPT-Neo directory (neither GPT-2 nor GPT-1), a GPT-2 with an extra, a missing or an untied output
    weight: exit 2, one line naming the model type or the weight, nothing written."""
    from safetensors.torch import load_file, save_file
    from transformers import GPTNeoConfig

    GPTNeoConfig(vocab_size=100, max_position_embeddings=32, hidden_size=32, num_layers=2, num_heads=4,
                 attention_types=[[["global"], 2]]).save_pretrained(tmp_path / "neo")
    capfd.readouterr()
    assert main(["from-hf", "--input", str(tmp_path / "neo"), "--output", str(tmp_path / "out")]) == 2
    assert capfd.readouterr().err.strip() == (f"gpt-convert: error: from-hf: {tmp_path / 'neo'} holds a 'gpt_neo' "
                                              "model; only GPT-2 (model_type 'gpt2') and GPT-1 ('openai-gpt') are "
                                              "converted")
    random_gpt2(tmp_path / "gpt2", 100, 32, 2, 4)
    weights = load_file(tmp_path / "gpt2" / "model.safetensors")
    untied = random_gpt2(tmp_path / "untied", 100, 32, 2, 4)
    untied.config.tie_word_embeddings = False
    untied.config.save_pretrained(tmp_path / "untied")
    save_file({**weights, "lm_head.weight": torch.randn(100, 32)}, tmp_path / "untied" / "model.safetensors")
    cases = {"extra": ({**weights, "transformer.h.1.extra": torch.zeros(3)},
                       "weight transformer.h.1.extra in the files is not a GPT-2 weight"),
             "missing": ({k: v for k, v in weights.items() if k != "transformer.h.0.attn.c_attn.bias"},
                         "weight transformer.h.0.attn.c_attn.bias is missing from the files")}
    for case, (tensors, problem) in cases.items():
        random_gpt2(tmp_path / case, 100, 32, 2, 4)
        save_file(tensors, tmp_path / case / "model.safetensors")
    cases["untied"] = (None, "weight lm_head.weight is not used by the conversion")
    for case, (_, problem) in cases.items():
        capfd.readouterr()
        assert main(["from-hf", "--input", str(tmp_path / case), "--output", str(tmp_path / "out")]) == 2
        err = capfd.readouterr().err  # after transformers' progress bar, without its load report
        last = err.strip().splitlines()[-1]
        assert last == f"gpt-convert: error: from-hf: {tmp_path / case}: {problem}; not converted"
        assert "MISSING" not in err and "UNEXPECTED" not in err
        assert not (tmp_path / "out").exists()
    assert main(["from-hf", "--input", str(tmp_path / "gpt2"), "--output", str(tmp_path / "out")]) == 0
