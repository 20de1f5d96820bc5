"""GPT-3's learning-rate and batch-size schedules at chosen token counts (Brown et al. 2020, App. B)."""
import math

import pytest

from training.config import load_config
from training.schedule import batch_size, learning_rate
from tests.training.launch import REPO

GPT3_175B = load_config(REPO / "configs/gpt3/175b.yaml").train


@pytest.mark.parametrize("tokens, expected", [
    (0, 0.0),
    (187_500_000, 0.5 * 0.6e-4),  # halfway through the 375M-token warmup
    (375_000_000, 0.6e-4),  # peak
    # halfway through the cosine: 10% + 90% x (1 + cos(pi/2)) / 2 = 55% of the peak
    (375_000_000 + (260e9 - 375e6) / 2, 0.55 * 0.6e-4),
    (260_000_000_000, 0.1 * 0.6e-4),  # decayed to 10% ...
    (300_000_000_000, 0.1 * 0.6e-4),  # ... and held there
])
def test_learning_rate_follows_gpt3(tokens, expected):
    assert learning_rate(int(tokens), GPT3_175B) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_cosine_shape_between_points():
    t = GPT3_175B
    for fraction in (0.1, 0.3, 0.7, 0.9):
        tokens = t.warmup_tokens + fraction * (t.decay_tokens - t.warmup_tokens)
        expected = t.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * fraction)))
        assert learning_rate(int(tokens), t) == pytest.approx(expected, rel=1e-6)


def test_batch_ramp_from_32k_tokens_to_full_over_12b_tokens():
    t = GPT3_175B
    assert batch_size(0, t) * 2048 == 32768
    assert batch_size(12_000_000_000, t) == t.global_batch_size == 1536
    assert batch_size(300_000_000_000, t) == 1536
    sizes = [batch_size(int(x * 1e9), t) for x in range(13)]
    assert sizes == sorted(sizes)
    assert all(s % 16 == 0 for s in sizes)
    # linear: halfway through the ramp the batch is about halfway between the ends
    assert batch_size(6_000_000_000, t) == pytest.approx((16 + 1536) / 2, abs=16)
