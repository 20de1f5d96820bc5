"""Weights & Biases next to TensorBoard: an offline run (no network) holds the losses of metrics.jsonl."""
import json
import struct
import sys

import pytest

from common.errors import ConfigError
from tests.training.launch import TINY, read_metrics, run_pretrain
from training.config import load_config

BLOCK = 32768  # the .wandb file is LevelDB's log format: 32 KiB blocks of (crc32c, length, type) chunks
HEADER = 7  # ":W&B", a 2-byte magic and a version byte; also each chunk's header size
FULL, LAST = 1, 4


def wandb_records(path):
    """The protobuf records W&B wrote to a run's .wandb file, parsed with W&B's own message class."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, pending = HEADER, b""
    while position + HEADER <= len(data):
        if BLOCK - position % BLOCK < HEADER:  # a block's tail too short for a header is padding
            position += BLOCK - position % BLOCK
            continue
        length, kind = struct.unpack_from("<HB", data, position + 4)
        pending += data[position + HEADER:position + HEADER + length]
        position += HEADER + length
        if kind in (FULL, LAST):
            record = Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def history(records) -> list[dict]:
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for record in records if record.WhichOneof("record_type") == "history"]


def test_offline_run_logs_the_losses_of_metrics_jsonl(tmp_path):
    """A run of 2 steps, resumed for a third: one W&B run (same id) whose history is metrics.jsonl's."""
    run_dir = tmp_path / "run"
    wandb = ["logging.eval_interval=2", "logging.wandb_project=gpt-test", "logging.wandb_run_name=tiny-offline"]
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    for steps in (2, 3):
        run_pretrain(run_dir, overrides=[f"train.steps={steps}", *wandb], env=env)
    files = sorted(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    records = [record for file in files for record in wandb_records(file)]
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert len(files) == 2 and {(run.run_id, run.project, run.display_name) for run in runs} == {
        ((run_dir / "wandb_run_id").read_text(), "gpt-test", "tiny-offline")}
    rows = history(records)
    train, valid = read_metrics(run_dir)
    assert [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r] == [(r["step"], r["loss"]) for r in train]
    assert [(r["step"], r["valid/valid_loss"]) for r in rows if "valid/valid_loss" in r] == [
        (r["step"], r["valid_loss"]) for r in valid] and [r["step"] for r in valid] == [2, 3]
    assert [r["train/grad_norm"] for r in rows if "train/loss" in r] == [r["grad_norm"] for r in train]


def test_wandb_is_off_by_default_and_its_absence_is_one_line(monkeypatch):
    assert load_config(TINY).logging.wandb_project == ""
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: importlib finds no spec
    with pytest.raises(ConfigError, match=r"^logging.wandb_project is set but wandb is not installed: "
                                          r"pip install 'gpt-stack\[wandb\]'$"):
        load_config(TINY, ["logging.wandb_project=gpt-test"])
