"""Running dedup stages on the shared executor: partitions as tasks, stage barriers.

Per-shard stages go straight to `executor.run_shards`. Stages that work on hash
partitions instead of input shards use the same runner with one virtual input per
partition (``part-00007``), so they get the same rank split, worker pool,
progress bar and completion markers. Between stages every rank must see the
previous stage complete: under MPI a barrier waits for it; a Slurm array has no
barrier, so each stage runs as its own (dependent) job with ``--stage``.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow.parquet as pq

from data_pipeline.errors import UserError
from data_pipeline.executor import Rank, ShardTask, detect_rank, make_tasks, run_shards
from data_pipeline.shards import is_done, write_json
from data_pipeline.stats import Stats


KEYS_PER_PARTITION = 2_000_000  # ~32 MB of keys and ids, a few times that while sorting


def partition_inputs(count: int) -> list[Path]:
    """Virtual inputs naming `count` hash partitions."""
    return [Path(f"part-{k:05d}") for k in range(count)]


def partition_index(task: ShardTask) -> int:
    return int(task.name.split("-")[1])


def row_count(files: dict[int, Path] | list[Path]) -> int:
    """Rows in these parquet files, from their footers."""
    return sum(pq.read_metadata(path).num_rows for path in (files.values() if isinstance(files, dict) else files))


class StageRunner:
    """Runs the stages of one dedup invocation with the CLI's executor settings."""

    def __init__(self, args: argparse.Namespace, inputs: Sequence[Path]):
        self.args = args
        self.inputs = list(inputs)
        self.rank: Rank = detect_rank(args.executor)
        self.tasks = make_tasks(self.inputs, Path(args.output), args.input)

    @property
    def is_mpi(self) -> bool:
        return self.rank.kind == "mpi"

    def barrier(self) -> None:
        if self.is_mpi:
            from mpi4py import MPI

            MPI.COMM_WORLD.Barrier()

    def check_settings(self, work: Path, settings: dict) -> None:
        """Resuming with other settings would mix incompatible intermediates: refuse."""
        if self.rank.rank == 0:
            path = work / "settings.json"
            current = json.loads(json.dumps(settings))
            if path.exists():
                previous = json.loads(path.read_text())
                changed = sorted(k for k in current.keys() | previous.keys() if previous.get(k) != current.get(k))
                if changed:
                    raise UserError(f"{work} holds a run with other settings ({', '.join(changed)}); "
                                    "use a new --output or the same settings")
            else:
                write_json(path, current)
        self.barrier()

    def files(self, directory: Path, suffix: str = ".parquet") -> dict[int, Path]:
        """Per-shard stage outputs by shard index."""
        return {t.index: directory / f"{t.name}{suffix}" for t in self.tasks}

    def per_shard(self, process: Callable[[ShardTask, Stats], None], out_dir: Path, stage: str) -> Stats:
        return run_shards(process, self.inputs, out_dir, input_root=self.args.input,
                          workers=self.args.workers, executor=self.args.executor, stage=stage)

    def per_partition(self, process: Callable[[ShardTask, Stats], None], count: int, out_dir: Path,
                      stage: str, summary: bool = True) -> Stats:
        return run_shards(process, partition_inputs(count), out_dir, workers=self.args.workers,
                          executor=self.args.executor, stage=stage, summary=summary)

    def partition_count(self, requested: int, items: int, per_partition: int, most: int | None = None) -> int:
        """Hash partitions for a grouping stage: one per rank under MPI, else as requested,
        else as many as keep each partition under `per_partition` of the `items` (counted
        from the previous stage's files, so a resumed run computes the same number);
        at most `most`."""
        count = self.rank.world if self.is_mpi else requested or math.ceil(items / per_partition)
        return max(1, min(count, most or count))

    def shards_complete(self, out_dir: Path, stage: str) -> None:
        self.require_complete(out_dir, [t.name for t in self.tasks], stage)

    def partitions_complete(self, out_dir: Path, count: int, stage: str) -> None:
        self.require_complete(out_dir, [p.name for p in partition_inputs(count)], stage)

    def require_complete(self, out_dir: Path, names: list[str], stage: str) -> None:
        """A stage must not start on a partial result of the previous one (Slurm tasks still running)."""
        missing = [n for n in names if not is_done(out_dir, n)]
        if missing:
            raise UserError(f"stage {stage} is not complete ({len(missing)} of {len(names)} tasks missing, "
                            f"e.g. {missing[0]}); with a Slurm array run each stage as its own job "
                            f"(--stage), waiting for the previous one")


def add_to_stats(output: Path, key: str, value) -> None:
    """Add a section to a stage's stats.json, under the executor's lock (ranks finish in any order)."""
    with open(output / ".stats.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stats = json.loads((output / "stats.json").read_text())
        stats[key] = value
        write_json(output / "stats.json", stats)
