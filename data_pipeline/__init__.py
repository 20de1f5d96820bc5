"""Data pipeline: Common Crawl -> clean, deduplicated documents -> Megatron token shards -> blends."""
