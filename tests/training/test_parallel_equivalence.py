"""3D parallelism changes how the work is split, not the numbers.

Same seed, same data, fp32, dropout 0: every layout's per-step losses must match a
single process within 1e-5 relative (float summation order is the only difference).
"""
import pytest

from tests.training.launch import max_relative_difference, read_metrics, run_pretrain

pytestmark = pytest.mark.multiproc

# vocab 50257 padded to a multiple of 1024 x TP gives 51200 for TP 1 and 2 alike: the padded
# rows take part in the softmax, so layouts compare only at equal padded vocabularies.
COMMON = ["train.steps=10", "model.make_vocab_size_divisible_by=1024", "model.dropout=0.0",
          "precision=fp32", "data.blend=tests/data/tokens/blend2.json", "logging.eval_iters=2"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("single")
    run_pretrain(run_dir, 1, COMMON)
    return read_metrics(run_dir)


def test_loss_falls_on_real_text(reference):
    train, valid = reference
    losses = [r["loss"] for r in train]
    assert losses[0] == pytest.approx(10.83, abs=0.1)  # ln(50257): an untrained model is uniform
    assert losses[-1] < losses[0] - 1.0
    assert valid[-1]["valid_loss"] < losses[0] - 1.0
    assert valid[-1]["valid_ppl"] == pytest.approx(2.718281828 ** valid[-1]["valid_loss"], rel=1e-5)
    for record in train:
        for key in ("step", "loss", "lr", "tokens", "tokens_per_s", "tflops", "mfu", "grad_norm", "loss_scale"):
            assert key in record


@pytest.mark.parametrize("nproc, layout", [
    pytest.param(8, ["parallel.tp=2", "parallel.pp=2", "parallel.zero_stage=1"], id="tp2-pp2-dp2-zero1"),
    pytest.param(2, ["parallel.tp=2"], id="tp2"),
    pytest.param(2, ["parallel.pp=2"], id="pp2"),
    pytest.param(2, ["parallel.zero_stage=1"], id="dp2-zero1"),
    pytest.param(2, ["parallel.zero_stage=2"], id="dp2-zero2"),
    pytest.param(2, ["parallel.zero_stage=3"], id="dp2-zero3"),
])
def test_layout_matches_single_process(reference, tmp_path, nproc, layout):
    run_pretrain(tmp_path, nproc, COMMON + layout)
    train, valid = read_metrics(tmp_path)
    ref_train, ref_valid = reference
    assert [r["step"] for r in train] == list(range(1, 11))
    assert max_relative_difference([r["loss"] for r in ref_train], [r["loss"] for r in train]) < 1e-5
    assert max_relative_difference([r["valid_loss"] for r in ref_valid], [r["valid_loss"] for r in valid]) < 1e-5
    assert max_relative_difference([r["grad_norm"] for r in ref_train], [r["grad_norm"] for r in train]) < 1e-4
