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

1. Names every input (`shards.shard_name`) and sorts the list (a path manifest's inputs
   keep its order); rank r of w takes every w-th shard starting at r. The rank comes from
   `detect_rank`: a Slurm array task (``SLURM_ARRAY_TASK_ID``/``_COUNT``), a Slurm step
   task (``SLURM_PROCID``/``SLURM_NTASKS``), an MPI rank (mpi4py, when started by
   ``mpiexec``) or a lone local run.
2. Locks this rank's shards (`claim`): a second run over the same shards of the same
   output directory is refused in one line, while MPI ranks and Slurm array tasks, which
   take disjoint shards, run side by side.
3. Skips shards whose completion marker records what this run would make them from
   (`made_from`: the input's size and mtime, or a remote input's URL, size and ETag; the
   stage's `options`; the `code_version` of the code the stage runs);
   a shard without a marker, or whose marker is `incomplete` (its input ended early), is
   (re)done (resume after a kill, or the full file after a cut one). A marker that records
   anything else is refused in one line, or with ``overwrite`` redone: finished work is
   never replaced without ``--overwrite``.
4. Runs the rest on ``--workers`` spawned processes (in-process when 1), with a
   progress bar. Per shard it records ``seconds`` and ``max_rss_mb`` in the shard's
   stats, then writes the marker (with the stats) after `process` returned, i.e. after
   its outputs were renamed into place. A shard with a remote input or output that fails
   transiently (`remote.transient`) is restarted from scratch after a backoff: its outputs
   are published only at the end, so a restart cannot duplicate rows.
5. Merges the current markers of the input list into ``output_dir/stats.json`` (under
   a file lock, so ranks finishing together cannot lose each other's shards), prints a
   summary, and raises `UserError` naming the failed shards if any failed (the other
   shards are still completed and kept), or else the incomplete ones if any.
"""
from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any, NamedTuple

import xxhash
from tqdm import tqdm

from common.errors import UserError
from data_pipeline.remote import (ManifestInputs, is_url, location, lock_directory, retrying, transient,
                                  write_json_at)
from data_pipeline.shards import file_identity, mark_done, read_marker, shard_name, unmark
from data_pipeline.stats import Stats, peak_rss_mb

EXECUTORS = ("auto", "local", "mpi", "slurm")
LOCK_FILE = ".shards.lock"


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


def add_executor_args(parser: argparse.ArgumentParser, default_workers: int = 1,
                      output_help: str = "output directory") -> None:
    """The flags every stage shares: --input, --output (a path or URL), --workers, --executor."""
    parser.add_argument("--input", required=True,
                        help="input file or directory of shards, a URL (https://, s3://: a file or prefix) "
                             "or a path manifest (*.paths.gz)")
    parser.add_argument("--output", required=True, help=output_help + " or URL (s3://...)")
    parser.add_argument("--workers", type=int, default=default_workers,
                        help="local worker processes per rank (default %(default)s)")
    parser.add_argument("--executor", choices=EXECUTORS, default="auto",
                        help="how this process finds its share of the input: auto-detect a Slurm "
                             "array/step or mpiexec (default), force one, or run everything locally")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo finished shards made from other inputs, options or code (without it "
                             "such a rerun is refused)")


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
    """Tasks for `inputs` in sorted order (a manifest's in its order); two inputs mapping to
    one name is an error."""
    paths = [location(p) for p in inputs]
    if not isinstance(inputs, ManifestInputs):
        paths.sort(key=lambda p: str(p).split("/"))  # the order of pathlib's comparison
    root = location(input_root) if input_root is not None else None
    root = root if root is not None and (is_url(root) or root.is_dir()) else None
    tasks = [ShardTask(i, p, shard_name(p, root), location(output_dir)) for i, p in enumerate(paths)]
    seen: dict[str, Path] = {}
    for task in tasks:
        if task.name in seen:
            raise UserError(f"inputs {seen[task.name]} and {task.path} map to the same output name {task.name!r}")
        seen[task.name] = task.path
    return tasks


def normalised(options: dict) -> dict:
    """`options` as they read back from a marker (tuples as lists, paths as strings)."""
    return json.loads(json.dumps(options, sort_keys=True, default=str))


def inputs_digest(tasks: Sequence[ShardTask]) -> str:
    """One digest of the names and `file_identity` of all `tasks`' inputs, for results that
    depend on every input (dedup, decontamination, a merged token shard)."""
    identities = [[t.name, file_identity(t.path)] for t in tasks]
    return xxhash.xxh64(json.dumps(identities).encode()).hexdigest()


def made_from(task: ShardTask, options: dict, depends: str | None, code: str) -> dict:
    """What a shard's outputs are made from, as its marker records it: its input file,
    the `inputs_digest` of what else it reads (`depends`), the stage's options, its `code_version`.
    A remote input's identity is left out (None): a network call, made where it is needed
    (`with_remote_identity`)."""
    identity = None if is_url(task.path) else file_identity(task.path)
    return {"input": identity, "depends": depends, "options": options, "code": code}


def with_remote_identity(record: dict, task: ShardTask) -> dict:
    """`record` with the identity (URL, size, ETag) of `task`'s remote input looked up."""
    return {**record, "input": file_identity(task.path)} if is_url(task.path) else record


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two (nested) option mappings."""
    keys = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(prefix + key)
    return keys


def changes(record: dict, expected: dict) -> str | None:
    """Why a marker (or merged output) `record` does not describe what `expected` would make
    (None when it does)."""
    made = record.get("made_from")
    if made is None:
        return "no record of what they were made from (an older gpt-data)"
    reasons = []
    if (made.get("input"), made.get("depends")) != (expected["input"], expected["depends"]):
        reasons.append("input files changed")
    keys = changed_keys(made.get("options") or {}, expected["options"])
    if keys:
        reasons.append(f"other settings ({', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''})")
    if made.get("code") != expected["code"]:
        reasons.append("other data_pipeline code")
    return ", ".join(reasons) or None


def unfinished(tasks: Sequence[ShardTask], options: dict, *, code: str, depends: str | None = None,
               overwrite: bool = False) -> tuple[list[tuple[ShardTask, dict]], str | None]:
    """The tasks to run, each with the record its marker will hold, and a refusal message.
    A task is run if it has no marker, or (only with `overwrite`) if its marker records other
    inputs, options or code; without `overwrite` such markers are refused, never replaced."""
    todo, stale = [], []
    for task in tasks:
        record = made_from(task, options, depends, code)
        marker = read_marker(task.output_dir, task.name)
        if marker is not None and not incomplete(marker) and is_url(task.path):
            try:
                record = with_remote_identity(record, task)
            except Exception as err:
                if not transient(err):
                    raise
                marker = None  # unreachable now: redo it; its run retries and reports the failure
        why = None if marker is None else changes(marker, record)
        if marker is None or incomplete(marker) or (why and overwrite):
            todo.append((task, record))
        elif why:
            stale.append((task, why))
    if stale:
        (task, why), count = stale[0], len(stale)
        return [], (f"{task.output_dir}: {count} finished shard(s) (e.g. {task.name}) do not match this run: {why}; "
                    "rerun with --overwrite to redo them, or choose a new --output")
    return todo, None


def agree(rank: Rank, error: str | None) -> None:
    """Raise `error`, this rank's or another's, on every rank: under MPI one rank raising
    alone would leave the others waiting at the next barrier."""
    if rank.kind == "mpi":
        from mpi4py import MPI

        error = next((e for e in MPI.COMM_WORLD.allgather(error) if e), None)
    if error:
        raise UserError(error)


@contextmanager
def claim(output_dir: Path, names: Sequence[str], rank: Rank) -> Iterator[None]:
    """Hold a lock on each of `names` in `output_dir` for the duration, or refuse (on every
    rank): two runs writing one shard delete each other's tmp files and markers.

    One fcntl byte-range lock per name, at an offset from its hash, in ``output_dir/.shards.lock``:
    MPI ranks and Slurm array tasks lock disjoint shards and run side by side, a local run
    and an array task over the same shards do not, and a killed run's locks die with it.
    Locks belong to the process, so the lock file is opened nowhere else. A remote output's
    lock file is local (`remote.lock_directory`): it guards against runs on this machine only."""
    fd = os.open(lock_directory(output_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        agree(rank, _lock_all(fd, names, output_dir))
        yield
    finally:
        os.close(fd)


def _lock_all(fd: int, names: Sequence[str], output_dir: Path) -> str | None:
    for name in names:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, xxhash.xxh64_intdigest(name.encode()) >> 2)
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EAGAIN):
                return (f"another run is writing {output_dir} (shard {name}); wait for it to finish "
                        "or choose another --output")
            return f"cannot lock {output_dir / LOCK_FILE}: {err.strerror} (fcntl locks are needed)"
    return None


def use_returning_memory_pool() -> None:
    """Arrow's default allocator (mimalloc) keeps what earlier tasks freed, so a process that
    runs many shard or partition tasks one after another grows with their number (the dedup
    clusters stage went from 200 to 450 MB over its 70 tasks); jemalloc returns it (that run
    stays at ~260 MB, see docs/dedup.md). Set where tasks run, not at import, so that importing
    a module of the package (the trainer reads blends) loads no Arrow. Spawned workers inherit
    the environment variable; an ARROW_DEFAULT_MEMORY_POOL set by the user wins."""
    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    import pyarrow

    os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "jemalloc"
    try:
        pyarrow.set_memory_pool(pyarrow.jemalloc_memory_pool())
    except NotImplementedError:  # a pyarrow build without jemalloc: keep its default
        del os.environ["ARROW_DEFAULT_MEMORY_POOL"]


def run_shards(process: ProcessFn, inputs: Sequence[Path], output_dir: str | os.PathLike, *, options: dict,
               code: str, depends: str | None = None, overwrite: bool = False,
               input_root: str | os.PathLike | None = None, workers: int = 1, executor: str = "auto",
               stage: str = "stage", quiet: bool = False, summary: bool = True) -> Stats:
    """Run `process` on this rank's unfinished shards; return the merged stats of all ranks.
    `options` are everything besides the input that decides a shard's outputs, `code` the stage's
    `code_version` (of the module that calls it: ``code_version(__name__)``), `depends` the
    `inputs_digest` of other files every task reads (see `made_from`); `overwrite` redoes
    finished shards that were made from anything else instead of refusing.
    `quiet` hides the progress bar and the summary, `summary=False` the summary only."""
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    use_returning_memory_pool()
    output_dir = location(output_dir)
    options = normalised(options)
    tasks = make_tasks(inputs, output_dir, input_root)
    rank = detect_rank(executor)
    mine = tasks[rank.rank::rank.world]
    with claim(output_dir, [t.name for t in mine], rank):
        todo, refusal = unfinished(mine, options, code=code, depends=depends, overwrite=overwrite)
        agree(rank, refusal)
        failures = _run_tasks(process, todo, workers, f"{stage} [{rank.rank}/{rank.world}]" if rank.world > 1 else stage,
                              quiet)
        if rank.kind == "mpi":
            from mpi4py import MPI

            MPI.COMM_WORLD.Barrier()
    merged = write_stage_stats(output_dir, tasks, stage, options, depends, code, failures)
    if summary and not quiet and (rank.rank == 0 or rank.kind != "mpi"):
        print(format_summary(stage, merged, len(mine) - len(todo), len(todo)), file=sys.stderr)
    cut = []
    if merged.get("shards_incomplete"):  # the markers are read again only when some input ended early
        cut = [t.name for t in mine if (m := read_marker(output_dir, t.name)) is not None and incomplete(m)]
    if cut and not failures:
        raise UserError(f"{len(cut)} shard(s) have an input that ends early (first: {cut[0]}; see notes in "
                        f"{output_dir / 'stats.json'}): their complete records are written but they are not "
                        "marked done; rerun with the full input to finish them")
    if failures:
        first_name, first_error = failures[0]
        raise UserError(f"{len(failures)} shard(s) failed and are not marked done "
                        f"(first: {first_name}: {first_error}); fix and re-run to resume")
    return merged


def _run_tasks(process: ProcessFn, todo: list[tuple[ShardTask, dict]], workers: int, desc: str,
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
        for task, record in todo:
            finished(*run_one(process, task, record, partial(LiveStats, read)), counted_live=True)
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(run_one, process, task, record) for task, record in todo]
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


def run_one(process: ProcessFn, task: ShardTask, record: dict,
            new_stats: Callable[[], Stats] = Stats) -> tuple[str, str | None, dict]:
    """Run one shard and mark it done, made from `record`; a failure is returned as a
    message, not raised. A transient failure (a remote input or output) restarts the shard
    with fresh stats (`remote.retrying`)."""
    unmark(task.output_dir, task.name)  # a redo killed halfway must not look finished
    start = time.perf_counter()

    def attempt() -> tuple[dict, Stats]:
        stats = new_stats()
        made = with_remote_identity(record, task)  # what this attempt reads
        process(task, stats)
        return made, stats

    try:
        record, stats = retrying(attempt, f"shard {task.name}")
    except UserError as err:
        return task.name, str(err), {}
    except Exception as err:
        if transient(err):  # still failing after the retries: the next run retries it
            return task.name, f"{type(err).__name__}: {err}", {}
        # a bug, not bad input: show where, keep going with other shards
        traceback.print_exc()
        return task.name, f"{type(err).__name__}: {err}", {}
    stats.add("seconds", n=round(time.perf_counter() - start, 4))
    stats.set_max("max_rss_mb", value=round(peak_rss_mb(), 1))
    finish(task, record, stats.to_dict())
    return task.name, None, stats.to_dict()


def finish(task: ShardTask, record: dict, stats: dict[str, Any]) -> None:
    """Write `task`'s completion marker: what it was made from (`made_from`) and its stats."""
    mark_done(task.output_dir, task.name, {"shard": task.name, "input": str(task.path), "made_from": record,
                                           "stats": stats})


def incomplete(marker: dict) -> bool:
    """Whether a marker is of a shard whose input ended early (its stats count
    ``shards_incomplete``): its outputs and stats are kept, but it is not done, and a rerun
    (with the full input) redoes it without ``--overwrite``."""
    return bool(marker.get("stats", {}).get("shards_incomplete"))


def write_stage_stats(output_dir: Path, tasks: Sequence[ShardTask], stage: str, options: dict,
                      depends: str | None, code: str, failures: Sequence[tuple[str, str]] = ()) -> Stats:
    """Merge the current markers of `tasks` into ``stats.json`` (file-locked against other
    ranks); a marker of other inputs, options or code does not count as done. A remote
    input is not looked up again (one request per shard of every rank): the rank that
    ran or skipped its shard checked it. ``failed`` maps the shards that failed (in this
    run, or earlier and without a marker since) to their errors."""
    with open(lock_directory(output_dir) / ".stats.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        markers = [m for t in tasks if (m := read_marker(output_dir, t.name)) is not None
                   and (incomplete(m) or changes(m, _expected(m, t, options, depends, code)) is None)]
        merged = Stats()
        for marker in markers:
            merged.merge(marker.get("stats", {}))
        done = {m.get("shard") for m in markers if not incomplete(m)}
        unmarked = {t.name for t in tasks} - {m.get("shard") for m in markers}
        failed = {name: error for name, error in _read_stats(output_dir).get("failed", {}).items() if name in unmarked}
        failed.update(failures)
        merged.data.update(stage=stage, shards_total=len(tasks), shards_done=len(done))
        if failed:
            merged.data.update(shards_failed=len(failed), failed=dict(sorted(failed.items())))
        write_json_at(output_dir / "stats.json", merged.to_dict())
    return merged


def _read_stats(output_dir: Path) -> dict:
    try:
        return json.loads((output_dir / "stats.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _expected(marker: dict, task: ShardTask, options: dict, depends: str | None, code: str) -> dict:
    record = made_from(task, options, depends, code)
    if is_url(task.path):
        record["input"] = (marker.get("made_from") or {}).get("input")
    return record


def format_summary(stage: str, stats: Stats, resumed: int, ran: int) -> str:
    """One paragraph for the terminal: shards, documents, bytes, throughput, removals."""
    docs_in, docs_out = stats.get("documents_in"), stats.get("documents_out")
    seconds = stats.get("seconds") or 0.0
    lines = [
        f"{stage}: {stats.get('shards_done')}/{stats.get('shards_total')} shards done "
        f"({ran} this run, {resumed} already done"
        + (f", {stats.get('shards_incomplete')} incomplete" if stats.get("shards_incomplete") else "") + ")",
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
