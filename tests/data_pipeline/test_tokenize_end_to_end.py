"""End to end on the bundled sample: extract -> filter -> dedup -> tokenize -> mixture -> training.pretrain.

The trainer's megatron-core BlendedDataset records which source each training sample
comes from (its cached ``dataset_index``); the samples the run consumed must follow the
blend's 0.7 / 0.3 weights.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from data_pipeline.blend import load_blend
from data_pipeline.cli import main as gpt_data

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
SEQ, STEPS, BATCH = 64, 10, 8


def test_pipeline_to_trainer_samples_sources_at_blend_weights(tmp_path):
    cc_steps = [["extract", "--input", str(DATA / "cc-sample-0000.warc.gz"), "--output", str(tmp_path / "extract")],
                ["filter", "--input", str(tmp_path / "extract"), "--output", str(tmp_path / "filter")],
                ["dedup", "exact", "--input", str(tmp_path / "filter"), "--output", str(tmp_path / "dedup")],
                ["tokenize", "--input", str(tmp_path / "dedup"), "--output", str(tmp_path / "tokens" / "cc_text_document")],
                ["tokenize", "--input", str(DATA / "wiki-en-sample.jsonl.gz"),
                 "--output", str(tmp_path / "tokens" / "wiki_text_document")],
                ["mixture", "--source", f"cc={tmp_path / 'tokens' / 'cc_text_document'}:0.7",
                 "--source", f"wiki={tmp_path / 'tokens' / 'wiki_text_document'}:0.3",
                 "--output", str(tmp_path / "tokens" / "blend.json")]]
    for argv in cc_steps:
        assert gpt_data(argv) == 0, argv
    blend = load_blend(tmp_path / "tokens" / "blend.json")
    kept = json.loads((tmp_path / "dedup" / "stats.json").read_text())["documents_out"]
    assert blend.sources[0].documents == kept > 10  # the crawl's documents that survived filter + dedup

    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "training.pretrain", "--config", str(ROOT / "configs" / "tiny" / "gpt3_tiny.yaml"),
         "--run-dir", str(run), "--set", f"data.blend={tmp_path / 'tokens' / 'blend.json'}", f"train.steps={STEPS}",
         f"model.seq_length={SEQ}", f"train.global_batch_size={BATCH}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [m for m in metrics if "loss" in m][-1]
    assert last["step"] == STEPS and np.isfinite(last["loss"])
    consumed = last["tokens"] // SEQ
    (index_file,) = (run / "data_cache").glob("*-BlendedDataset-train-dataset_index.npy")
    sources = np.load(index_file)[:consumed]
    share = np.bincount(sources, minlength=2) / consumed
    assert consumed == STEPS * BATCH
    assert abs(share[0] - 0.7) <= 0.02 and abs(share[1] - 0.3) <= 0.02, share
