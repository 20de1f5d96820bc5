"""Run a per-shard task over a list of input shards: local processes, MPI ranks or a Slurm array.

Executors are separate from steps: a stage writes one function

    def process(task: ShardTask, stats: Stats) -> None:
        with ShardWriter(task.output()) as out:
            for doc in read_documents(task.path, stats):
                ...
                out.write(doc)

and calls ``run_shards(process, inputs, output_dir, workers=args.workers,
executor=args.executor, stage="filter")``. `process` must be a module-level function
(or a `functools.partial` of one with picklable arguments): workers are spawned.

What `run_shards` does:

1. Names every input (`shards.shard_name`) and sorts the list; rank r of w takes
   every w-th shard starting at r. The rank comes from `detect_rank`: a Slurm array
   task (``SLURM_ARRAY_TASK_ID``/``_COUNT``), a Slurm step task (``SLURM_PROCID``/
   ``SLURM_NTASKS``), an MPI rank (mpi4py, when started by ``mpiexec``) or a lone
   local run.
2. Skips shards that already have a completion marker (resume after a kill).
3. Runs the rest on ``--workers`` spawned processes (in-process when 1), with a
   progress bar. Per shard it records ``seconds`` and ``max_rss_mb`` in the shard's
   stats, then writes the marker (with the stats) after `process` returned, i.e. after
   its outputs were renamed into place.
4. Merges all markers of the current input list into ``output_dir/stats.json`` (under
   a file lock, so ranks finishing together cannot lose each other's shards), prints a
   summary, and raises `UserError` naming the failed shards if any failed (the other
   shards are still completed and kept).
"""
from __future__ import annotations

import argparse
import fcntl
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from data_pipeline.errors import UserError
from data_pipeline.shards import is_done, load_markers, mark_done, shard_name, write_json
from data_pipeline.stats import Stats, peak_rss_mb

EXECUTORS = ("auto", "local", "mpi", "slurm")


@dataclass(frozen=True)
class ShardTask:
    """One input shard and where its outputs go."""

    index: int
    path: Path
    name: str
    output_dir: Path

    def output(self, suffix: str = ".parquet", subdir: str | None = None) -> Path:
        """Output file for this shard: ``output_dir/[subdir/]<name><suffix>``."""
        base = self.output_dir / subdir if subdir else self.output_dir
        return base / f"{self.name}{suffix}"


class Rank(NamedTuple):
    rank: int
    world: int
    kind: str  # "local", "mpi" or "slurm"


ProcessFn = Callable[[ShardTask, Stats], None]


def add_executor_args(parser: argparse.ArgumentParser, default_workers: int = 1) -> None:
    """The flags every stage shares: --input, --output, --workers, --executor."""
    parser.add_argument("--input", required=True, help="input file or directory of shards")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--workers", type=int, default=default_workers,
                        help="local worker processes per rank (default %(default)s)")
    parser.add_argument("--executor", choices=EXECUTORS, default="auto",
                        help="how this process finds its share of the input: auto-detect a Slurm "
                             "array/step or mpiexec (default), force one, or run everything locally")


def detect_rank(executor: str = "auto") -> Rank:
    """This process's rank and the number of ranks sharing the input list."""
    env = os.environ
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    if executor == "local":
        return Rank(0, 1, "local")
    if executor in ("auto", "slurm"):
        if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
            first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            return Rank(int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"]), "slurm")
        if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
            return Rank(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), "slurm")
        if executor == "slurm":
            raise UserError("--executor slurm: no SLURM_ARRAY_TASK_ID/COUNT or SLURM_PROCID/NTASKS set")
    mpi_env = any(k in env for k in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"))
    if executor == "mpi" or mpi_env:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        return Rank(comm.Get_rank(), comm.Get_size(), "mpi")
    return Rank(0, 1, "local")


def make_tasks(inputs: Sequence[Path], output_dir: str | os.PathLike,
               input_root: str | os.PathLike | None = None) -> list[ShardTask]:
    """Tasks for `inputs` in sorted order; two inputs mapping to one name is an error."""
    paths = sorted(Path(p) for p in inputs)
    root = Path(input_root) if input_root is not None and Path(input_root).is_dir() else None
    tasks = [ShardTask(i, p, shard_name(p, root), Path(output_dir)) for i, p in enumerate(paths)]
    seen: dict[str, Path] = {}
    for task in tasks:
        if task.name in seen:
            raise UserError(f"inputs {seen[task.name]} and {task.path} map to the same output name {task.name!r}")
        seen[task.name] = task.path
    return tasks


def run_shards(process: ProcessFn, inputs: Sequence[Path], output_dir: str | os.PathLike, *,
               input_root: str | os.PathLike | None = None, workers: int = 1,
               executor: str = "auto", stage: str = "stage", quiet: bool = False, summary: bool = True) -> Stats:
    """Run `process` on this rank's unfinished shards; return the merged stats of all ranks.
    `quiet` hides the progress bar and the summary, `summary=False` the summary only."""
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tasks = make_tasks(inputs, output_dir, input_root)
    rank = detect_rank(executor)
    mine = tasks[rank.rank::rank.world]
    todo = [t for t in mine if not is_done(output_dir, t.name)]
    failures = _run_tasks(process, todo, workers, f"{stage} [{rank.rank}/{rank.world}]" if rank.world > 1 else stage,
                          quiet)
    if rank.kind == "mpi":
        from mpi4py import MPI

        MPI.COMM_WORLD.Barrier()
    merged = write_stage_stats(output_dir, tasks, stage)
    if summary and not quiet and (rank.rank == 0 or rank.kind != "mpi"):
        print(format_summary(stage, merged, len(mine) - len(todo), len(todo)), file=sys.stderr)
    if failures:
        first_name, first_error = failures[0]
        raise UserError(f"{len(failures)} shard(s) failed and are not marked done "
                        f"(first: {first_name}: {first_error}); fix and re-run to resume")
    return merged


def _run_tasks(process: ProcessFn, todo: list[ShardTask], workers: int, desc: str,
               quiet: bool) -> list[tuple[str, str]]:
    failures: list[tuple[str, str]] = []
    bar = tqdm(total=len(todo), desc=desc, unit="shard", disable=quiet or not todo, dynamic_ncols=True)
    documents = 0  # read so far: live when shards run in this process, per shard otherwise

    def read(n: int) -> None:
        nonlocal documents
        documents += n
        bar.set_postfix(docs=documents, failed=len(failures), refresh=False)
        bar.update(0)  # redraws at most every `mininterval`

    def finished(name: str, error: str | None, stats: dict, counted_live: bool = False) -> None:
        if error is not None:
            failures.append((name, error))
        read(0 if counted_live else stats.get("documents_in", 0))
        bar.update()

    if workers == 1 or len(todo) <= 1:
        for task in todo:
            finished(*run_one(process, task, LiveStats(read)), counted_live=True)
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(run_one, process, task) for task in todo]
            for future in as_completed(futures):
                finished(*future.result())
    bar.close()
    failures.sort()
    return failures


class LiveStats(Stats):
    """Stats that report each ``documents_in`` to a callback (the progress bar)."""

    def __init__(self, on_documents: Callable[[int], None]):
        super().__init__()
        self._on_documents = on_documents

    def add(self, *keys: str, n: float = 1) -> None:
        super().add(*keys, n=n)
        if keys == ("documents_in",):
            self._on_documents(int(n))


def run_one(process: ProcessFn, task: ShardTask, stats: Stats | None = None) -> tuple[str, str | None, dict]:
    """Run one shard and mark it done; a failure is returned as a message, not raised."""
    stats = stats if stats is not None else Stats()
    start = time.perf_counter()
    try:
        process(task, stats)
    except UserError as err:
        return task.name, str(err), {}
    except Exception as err:  # a bug, not bad input: show where, keep going with other shards
        traceback.print_exc()
        return task.name, f"{type(err).__name__}: {err}", {}
    stats.add("seconds", n=round(time.perf_counter() - start, 4))
    stats.set_max("max_rss_mb", value=round(peak_rss_mb(), 1))
    mark_done(task.output_dir, task.name, {"shard": task.name, "input": str(task.path), "stats": stats.to_dict()})
    return task.name, None, stats.to_dict()


def write_stage_stats(output_dir: Path, tasks: Sequence[ShardTask], stage: str) -> Stats:
    """Merge the markers of `tasks` into ``stats.json`` (file-locked against other ranks)."""
    names = {t.name for t in tasks}
    with open(output_dir / ".stats.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        markers = [m for m in load_markers(output_dir) if m.get("shard") in names]
        merged = Stats()
        for marker in markers:
            merged.merge(marker.get("stats", {}))
        merged.data.update(stage=stage, shards_total=len(tasks), shards_done=len(markers))
        write_json(output_dir / "stats.json", merged.to_dict())
    return merged


def format_summary(stage: str, stats: Stats, resumed: int, ran: int) -> str:
    """One paragraph for the terminal: shards, documents, bytes, throughput, removals."""
    docs_in, docs_out = stats.get("documents_in"), stats.get("documents_out")
    seconds = stats.get("seconds") or 0.0
    lines = [
        f"{stage}: {stats.get('shards_done')}/{stats.get('shards_total')} shards done "
        f"({ran} this run, {resumed} already done)",
        f"  documents: {docs_in:,} in -> {docs_out:,} out, {stats.get('bytes_out') / 1e6:,.1f} MB out"
        + (f", {docs_in / seconds:,.0f} docs/s per worker" if seconds and docs_in else ""),
    ]
    for section in ("skipped", "removed"):
        counts = stats.get(section, default={})
        if counts:
            top = sorted(counts.items(), key=lambda kv: -kv[1])
            lines.append(f"  {section}: " + ", ".join(f"{k}={v:,}" for k, v in top[:8])
                         + (f" (+{len(top) - 8} more)" if len(top) > 8 else ""))
    return "\n".join(lines)
