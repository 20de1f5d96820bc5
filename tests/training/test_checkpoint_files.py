"""Which checkpoint a run continues from, and RNG files old and new, without starting a trainer."""
import random

import numpy as np
import pytest
import torch

from training.checkpoint import rng_state
from training.checkpoint_files import LATEST, MANIFEST, CheckpointError, read_rng, resume_point


def test_a_run_continues_from_the_newest_complete_checkpoint_whatever_latest_says(tmp_path):
    for tag in ("step00000002", "step00000004", "step00000006.partial"):  # the partial one has its manifest too
        (tmp_path / tag).mkdir()
        (tmp_path / tag / MANIFEST).write_text("{}")
    (tmp_path / "step00000008").mkdir()  # no manifest: not complete
    newest, pointer = tmp_path / "step00000004", tmp_path / LATEST
    continuing = "continuing from the newest complete checkpoint, step00000004"
    assert resume_point(tmp_path) == (newest, f"{pointer} is missing: {continuing}")
    for latest, note in (("step00000004", None),
                         ("", f"{pointer} is empty: {continuing}"),
                         ("step00000002", f"{pointer} names step00000002, but step00000004 is newer (its save ended "
                                          f"before it moved latest): {continuing}"),
                         ("step00000008", f"{pointer} names step00000008, which is not a complete checkpoint: "
                                          f"{continuing}"),
                         ("step00000030", f"{pointer} names step00000030, which is not a complete checkpoint: "
                                          f"{continuing}")):
        pointer.write_text(latest)
        assert resume_point(tmp_path) == (newest, note)
    for latest in ("../elsewhere", "/tmp", "step00000004/.."):
        pointer.write_text(latest)
        with pytest.raises(CheckpointError, match=f"latest names '{latest}', which is not a plain name inside it"):
            resume_point(tmp_path)
    empty = tmp_path / "empty"
    (empty / "step00000002.partial").mkdir(parents=True)
    assert resume_point(empty) == (None, None)  # a first save was killed: start afresh
    (empty / LATEST).write_text("step00000002")
    with pytest.raises(CheckpointError, match="names step00000002, but .* holds no complete checkpoint; remove"):
        resume_point(empty)


def test_rng_files_hold_tensors_and_those_from_before_still_load(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    torch.save(rng_state(), tmp_path / "new.pt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "new.pt") == []
    before = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
              "tp": torch.get_rng_state()}
    torch.save(before, tmp_path / "old.pt")  # what rng_state() wrote before: numpy's array pickled by numpy
    for name in ("new.pt", "old.pt"):
        state = read_rng(tmp_path / name, name)
        assert state["python"] == before["python"] and torch.equal(state["torch"], before["torch"])
        assert state["numpy"][0] == "MT19937" and state["numpy"][1].dtype == np.uint32
        assert np.array_equal(state["numpy"][1], before["numpy"][1]) and state["numpy"][2:] == before["numpy"][2:]
    torch.save(dict(before, python=(3, (1, 2), None)), tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="bad.pt is not a set of RNG states"):
        read_rng(tmp_path / "bad.pt", "bad.pt")
