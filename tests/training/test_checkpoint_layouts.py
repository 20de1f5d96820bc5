"""A TP2 x PP2 x DP2 checkpoint resumes bit-for-bit at its own layout, continues the loss curve at other
layouts (TP1 x PP2 x DP4, TP2 x PP1 x DP1, one process and from there TP2 again), exports to Hugging Face with
equal logits, and the export converted back at TP2 x PP2 trains on. Every layout has its default vocabulary
padding (50432 rows at TP2, 50304 at TP1): checkpoints are re-padded on load."""
import pytest
import torch

from tests.training.launch import losses, max_relative_difference, resume_from, run_pretrain
from tests.tools.test_convert import real_tokens
from training.checkpoint_files import read_manifest
from training.distributed import shutdown

pytestmark = pytest.mark.multiproc

# dropout 0: layouts draw different dropout masks; dense attention: exportable to Hugging Face GPT-2
COMMON = ["train.steps=8", "model.dropout=0.0", "model.sparse_every=0", "data.blend=tests/data/tokens/blend2.json",
          "logging.eval_iters=1", "precision=fp32"]
TP2_PP2_DP2 = ["parallel.tp=2", "parallel.pp=2"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tp2pp2dp2")
    run_pretrain(run_dir, 8, COMMON + TP2_PP2_DP2 + ["checkpoint.interval=4"])
    return run_dir, losses(run_dir)


def resume_from_step4(source_dir, run_dir, nproc, layout):
    return resume_from(source_dir, "step00000004", run_dir, nproc, COMMON + layout)


def test_same_layout_resume_is_bitwise_identical(source, tmp_path):
    source_dir, straight = source
    resumed = resume_from_step4(source_dir, tmp_path, 8, TP2_PP2_DP2)
    assert sorted(resumed) == [5, 6, 7, 8]
    assert [resumed[s] for s in range(5, 9)] == [straight[s] for s in range(5, 9)]


@pytest.mark.parametrize("nproc, layout", [
    pytest.param(8, ["parallel.tp=1", "parallel.pp=2"], id="tp1-pp2-dp4"),
    pytest.param(2, ["parallel.tp=2", "parallel.pp=1"], id="tp2-pp1-dp1"),
])
def test_resume_on_another_layout_continues_the_curve(source, tmp_path, nproc, layout):
    source_dir, straight = source
    resumed = resume_from_step4(source_dir, tmp_path, nproc, layout)
    assert abs(resumed[5] - straight[5]) / straight[5] < 1e-5
    # Adam's moments came along: the following steps stay on the curve too
    assert max_relative_difference([straight[s] for s in range(5, 9)], [resumed[s] for s in range(5, 9)]) < 1e-5


def test_one_process_and_back_to_tp2_repads_the_vocabulary(source, tmp_path):
    """TP2 -> one process (the 128 padded rows past 50304 and their Adam moments cut) -> TP2 (zero rows added):
    padded rows are masked out of the softmax, so both legs continue the uninterrupted run."""
    source_dir, straight = source
    one = tmp_path / "one"
    resumed = resume_from_step4(source_dir, one, 1, ["checkpoint.interval=6"])
    saved = [read_manifest(d)["padded_vocab_size"] for d in (source_dir / "checkpoints" / "step00000004",
                                                              one / "checkpoints" / "step00000006")]
    assert saved == [50432, 50304]
    back = resume_from(one, "step00000006", tmp_path / "tp2", 2, COMMON + ["parallel.tp=2"])
    assert sorted(back) == [7, 8]
    # measured: both legs equal to the uninterrupted run
    assert max_relative_difference([straight[s] for s in range(5, 9)], [resumed[s] for s in range(5, 9)]) < 1e-6
    assert max_relative_difference([straight[s] for s in (7, 8)], [back[s] for s in (7, 8)]) < 1e-6


def test_trained_checkpoint_exports_to_hugging_face(source, tmp_path):
    from transformers import GPT2LMHeadModel

    from tools.convert import to_hf
    from training.consolidated import load_gpt

    source_dir, _ = source
    to_hf(str(source_dir / "checkpoints"), str(tmp_path / "hf"))
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    try:
        ours, cfg = load_gpt(source_dir / "checkpoints")
        tokens = real_tokens(cfg.model.vocab_size, cfg.model.seq_length)
        with torch.no_grad():
            difference = (ours(tokens)[..., : cfg.model.vocab_size] - hf(tokens).logits).abs().max()
    finally:
        shutdown()
    assert difference < 1e-4


def test_hugging_face_export_converted_back_at_tp2_pp2_trains_on(source, tmp_path):
    """Trained checkpoint -> to-hf -> from-hf --tp 2 --pp 2 -> training at TP2 x PP2 follows training from the
    same weights consolidated directly (one process): both weights-only, so step 0 with fresh Adam state. The
    export has no padded rows, from-hf adds zero rows, consolidate cuts the trained ones: the same model."""
    from tools.convert import main as gpt_convert

    checkpoint = source[0] / "checkpoints"
    hf, converted, direct = tmp_path / "hf", tmp_path / "from-hf", tmp_path / "consolidated"
    try:
        assert gpt_convert(["to-hf", "--input", str(checkpoint), "--output", str(hf)]) == 0
        assert gpt_convert(["from-hf", "--input", str(hf), "--output", str(converted), "--tp", "2", "--pp", "2"]) == 0
        assert gpt_convert(["consolidate", "--input", str(checkpoint), "--output", str(direct)]) == 0
    finally:
        shutdown()
    fresh = COMMON + ["train.steps=4"]
    run_pretrain(tmp_path / "tp2pp2", 4, fresh + TP2_PP2_DP2 + [f"checkpoint.load={converted}", "model.arch=gpt2"])
    run_pretrain(tmp_path / "single", 1, fresh + [f"checkpoint.load={direct}"])
    trained_on, reference = losses(tmp_path / "tp2pp2"), losses(tmp_path / "single")
    assert sorted(trained_on) == [1, 2, 3, 4]
    assert max_relative_difference([reference[s] for s in range(1, 5)], [trained_on[s] for s in range(1, 5)]) < 1e-5
    assert reference[1] < source[1][8] + 0.1  # it started from the trained weights, not from scratch (~10.8)
