"""Fuzzy dedup under mpiexec gives exactly the single-process clusters and outputs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dedup_corpus as dc
import pyarrow.parquet as pq
import pytest

MPIEXEC = Path(sys.executable).parent / "mpiexec"
pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mpi_in")
    dc.write_shards(dc.build(2000, seed=9, sources=("common-crawl", "wikipedia")), root, 6)
    return root


@pytest.fixture(scope="module")
def single(shards, tmp_path_factory) -> Path:
    from data_pipeline.cli import main

    out = tmp_path_factory.mktemp("mpi_single")
    assert main(["dedup", "minhash", "--input", str(shards), "--output", str(out), "--priority", "wikipedia"]) == 0
    return out


@pytest.mark.parametrize("ranks", [2, 4])
def test_mpi_ranks_give_the_single_process_clusters(shards, single, tmp_path, ranks):
    if not MPIEXEC.exists():
        pytest.skip("mpiexec not installed in the venv (pip install mpich)")
    out = tmp_path / "out"
    proc = subprocess.run([str(MPIEXEC), "-n", str(ranks), sys.executable, "-m", "data_pipeline.cli", "dedup",
                           "minhash", "--input", str(shards), "--output", str(out), "--priority", "wikipedia"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The bucket exchange really ran on every rank: one pair file per rank.
    assert sorted(p.name for p in (out / ".dedup/minhash/pairs").glob("*.parquet")) == \
        [f"part-{r:05d}.parquet" for r in range(ranks)]
    reference = dc.read_decisions(single)
    assert reference.num_rows > 300
    assert dc.read_decisions(out).equals(reference)
    # The clusters rounds ran as one partition per rank as well.
    assert sorted(p.name for p in (out / ".dedup/minhash/clusters").glob("*.parquet")) == \
        [f"part-{r:05d}.parquet" for r in range(ranks)]
    for shard in sorted(single.glob("*.parquet")):
        assert pq.read_table(out / shard.name).equals(pq.read_table(shard))
