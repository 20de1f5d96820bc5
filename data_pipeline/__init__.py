"""Data pipeline: Common Crawl -> clean, deduplicated documents -> Megatron token shards -> blends."""
import pyarrow as _pa


def _use_returning_memory_pool() -> None:
    """Arrow's default allocator (mimalloc) keeps what earlier tasks freed, so a process that
    runs many shard or partition tasks one after another grows with their number (the dedup
    clusters stage went from 200 to 450 MB over its 70 tasks); jemalloc returns it (that run
    stays at ~260 MB, see docs/dedup.md). Spawned workers inherit the environment variable;
    an ARROW_DEFAULT_MEMORY_POOL set by the user wins."""
    import os

    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "jemalloc"
    try:
        _pa.set_memory_pool(_pa.jemalloc_memory_pool())
    except NotImplementedError:  # a pyarrow build without jemalloc: keep its default
        del os.environ["ARROW_DEFAULT_MEMORY_POOL"]


_use_returning_memory_pool()
