"""Running dedup stages on the shared executor: partitions as tasks, stage barriers.

Per-shard stages go straight to `executor.run_shards`. Stages that work on hash
partitions instead of input shards use the same runner with one virtual input per
partition (``part-00007``), so they get the same rank split, worker pool,
progress bar and completion markers. Between stages every rank must see the
previous stage complete: under MPI a barrier waits for it; a Slurm array has no
barrier, so each stage runs as its own (dependent) job with ``--stage``.

Every result depends on every input shard and on the command's settings, so each
stage's markers record both (the settings as options, the inputs as a digest): a rerun
with other settings, inputs or code is refused at its first stage before that does any
work, or with ``--overwrite`` redoes every stage. A run holds its input shards locked in the work
directory for the whole command, so a second run over them is refused at once.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import pyarrow.parquet as pq

from common.errors import UserError
from data_pipeline.executor import (Rank, ShardTask, agree, claim, detect_rank, inputs_digest, make_tasks, normalised,
                                    run_shards, unfinished)
from data_pipeline.remote import lock_directory, write_json_at
from data_pipeline.shards import DONE_DIR, unmark
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
    """Runs the stages of one dedup invocation with the CLI's executor settings; a context
    manager that holds this rank's input shards locked in the work directory `work`."""

    def __init__(self, args: argparse.Namespace, inputs: Sequence[Path], work: Path, settings: dict, code: str):
        self.args = args
        self.code = code  # the invoking command's `code_version`: every stage's markers record it
        self.inputs = list(inputs)
        self.rank: Rank = detect_rank(args.executor)
        self.tasks = make_tasks(self.inputs, args.output, args.input)
        self.work = work
        self.settings = normalised(settings)
        self.depends = inputs_digest(self.tasks)
        self._locks = ExitStack()

    def __enter__(self) -> StageRunner:
        self._locks.enter_context(claim(self.work, [t.name for t in self.tasks[self.rank.rank::self.rank.world]],
                                        self.rank))
        return self

    def __exit__(self, *exc) -> None:
        self._locks.close()

    @property
    def is_mpi(self) -> bool:
        return self.rank.kind == "mpi"

    def barrier(self) -> None:
        if self.is_mpi:
            from mpi4py import MPI

            MPI.COMM_WORLD.Barrier()

    def files(self, directory: Path, suffix: str = ".parquet") -> dict[int, Path]:
        """Per-shard stage outputs by shard index."""
        return {t.index: directory / f"{t.name}{suffix}" for t in self.tasks}

    def per_shard(self, process: Callable[[ShardTask, Stats], None], out_dir: Path, stage: str) -> Stats:
        return run_shards(process, self.inputs, out_dir, options=self.settings, code=self.code, depends=self.depends,
                          overwrite=self.args.overwrite, input_root=self.args.input, workers=self.args.workers,
                          executor=self.args.executor, stage=stage)

    def per_partition(self, process: Callable[[ShardTask, Stats], None], count: int, out_dir: Path,
                      stage: str, summary: bool = True) -> Stats:
        """Run `count` partition tasks. The count is part of what their markers record (the same
        settings can give another count, e.g. under a different number of MPI ranks); with
        --overwrite, partitions beyond it that an earlier run left are deleted, as readers of a
        partition directory take every ``part-*`` file in it."""
        if self.args.overwrite:
            keep = {p.name for p in partition_inputs(count)}
            for marker in sorted((out_dir / DONE_DIR).glob("part-*.json")):
                if marker.stem not in keep:
                    (out_dir / f"{marker.stem}.parquet").unlink(missing_ok=True)
                    marker.unlink(missing_ok=True)
        return run_shards(process, partition_inputs(count), out_dir, options=self.partition_options(count),
                          code=self.code, depends=self.depends, overwrite=self.args.overwrite,
                          workers=self.args.workers, executor=self.args.executor, stage=stage, summary=summary)

    def partition_options(self, count: int) -> dict:
        return dict(self.settings, partition_tasks=count)

    def partition_count(self, requested: int, items: int, per_partition: int, most: int | None = None) -> int:
        """Hash partitions for a grouping stage: one per rank under MPI, else as requested,
        else as many as keep each partition under `per_partition` of the `items` (counted
        from the previous stage's files, so a resumed run computes the same number);
        at most `most`."""
        count = self.rank.world if self.is_mpi else requested or math.ceil(items / per_partition)
        return max(1, min(count, most or count))

    def shards_complete(self, out_dir: Path, stage: str) -> None:
        self.require_complete(make_tasks(self.inputs, out_dir, self.args.input), self.settings, stage)

    def partitions_complete(self, out_dir: Path, count: int, stage: str) -> None:
        self.require_complete(make_tasks(partition_inputs(count), out_dir), self.partition_options(count), stage)

    def require_complete(self, tasks: list[ShardTask], options: dict, stage: str) -> None:
        """A stage must not start on a partial (Slurm tasks still running) or stale result of
        the previous one."""
        missing, refusal = unfinished(tasks, options, code=self.code, depends=self.depends)
        if refusal:
            raise UserError(f"stage {stage}: {refusal}")
        if missing:
            raise UserError(f"stage {stage} is not complete ({len(missing)} of {len(tasks)} tasks missing, "
                            f"e.g. {missing[0][0].name}); with a Slurm array run each stage as its own job "
                            f"(--stage), waiting for the previous one")

    def single(self, out_dir: Path, name: str, options: dict) -> tuple[ShardTask, dict] | None:
        """A task run outside `run_shards` (the clusters result, an MPI rank's pairs) with the
        record for its marker (`executor.finish`), or None if it is done; on every rank."""
        task = make_tasks([Path(name)], out_dir)[0]
        todo, refusal = unfinished([task], options, code=self.code, depends=self.depends, overwrite=self.args.overwrite)
        agree(self.rank, refusal)
        if todo:
            unmark(out_dir, name)
        return todo[0] if todo else None


def add_to_stats(output: Path, key: str, value) -> None:
    """Add a section to a stage's stats.json, under the executor's lock (ranks finish in any order)."""
    with open(lock_directory(output) / ".stats.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stats = json.loads((output / "stats.json").read_text())
        stats[key] = value
        write_json_at(output / "stats.json", stats)
