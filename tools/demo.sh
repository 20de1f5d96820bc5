#!/usr/bin/env bash
# End to end on the bundled sample: real Common Crawl WARC -> clean, deduplicated documents
# -> GPT-2 BPE token shards -> a two-source blend -> 3D-parallel training on 8 CPU processes
# (TP 2 x PP 2 x DP 2) -> checkpoint -> Hugging Face GPT-2 export -> generation.
# The model is GPT-3-shaped but dense (GPT-2's export format has no sparse attention).
#
#   bash tools/demo.sh [OUTPUT_DIR]        (default: demo_out/)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo_out}
bash tools/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
NPROC=${NPROC:-8}
TP=${TP:-2}
PP=${PP:-2}
STEPS=${STEPS:-30}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONWARNINGS=ignore
rm -rf "$OUT"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/8 extract text from a real Common Crawl WARC (fastwarc + resiliparse)"
gpt-data extract --input tests/data/cc-sample-0000.warc.gz --output "$OUT/extract"

step "2/8 filter: fastText language ID, Gopher quality + repetition, C4 rules"
gpt-data filter --input "$OUT/extract" --output "$OUT/filter" --config configs/data/filters.yaml

step "3/8 fuzzy dedup (MinHash LSH, Jaccard-verified) and decontamination would follow here"
gpt-data dedup minhash --input "$OUT/filter" --output "$OUT/dedup"

step "4/8 tokenize with GPT-2's BPE into Megatron .bin/.idx shards"
gpt-data tokenize --input "$OUT/dedup" --output "$OUT/tokens/cc_gpt2_text_document" --tokenizer gpt2

step "5/8 mix: 60% Common Crawl, 40% Wikipedia (bundled shard), GPT-3 style"
gpt-data mixture --source "cc=$OUT/tokens/cc_gpt2_text_document:0.6" \
                 --source "wiki=tests/data/tokens/wiki_gpt2_text_document:0.4" \
                 --token-budget 100000 --output "$OUT/blend.json"
# one HTML page of plots: the funnel, removals per rule, languages, dedup clusters, tokens and epochs per source
gpt-data report --input "$OUT/extract" "$OUT/filter" "$OUT/dedup" "$OUT/tokens/cc_gpt2_text_document" \
                "$OUT/blend.json" --output "$OUT/report.html"

step "6/8 train a tiny GPT-3 with TP $TP x PP $PP x DP $((NPROC / TP / PP)) on $NPROC CPU processes"
python -m torch.distributed.run --nproc-per-node "$NPROC" --master-port "${MASTER_PORT:-29517}" \
    -m training.pretrain --config configs/tiny/gpt3_tiny.yaml --run-dir "$OUT/run" \
    --set data.blend="$OUT/blend.json" parallel.tp="$TP" parallel.pp="$PP" train.steps="$STEPS" \
          logging.eval_interval=10 model.sparse_every=0
python - "$OUT/run/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
train = [r for r in rows if "loss" in r]
valid = [r for r in rows if "valid_loss" in r]
print(f"loss {train[0]['loss']:.3f} -> {train[-1]['loss']:.3f} over {len(train)} steps; "
      f"validation perplexity {valid[-1]['valid_ppl']:.1f}")
PY
gpt-convert inspect --input "$OUT/run/checkpoints"

step "7/8 export the checkpoint to a Hugging Face GPT-2 directory and check transformers loads it"
gpt-convert to-hf --input "$OUT/run/checkpoints" --output "$OUT/hf"
python - "$OUT/hf" <<'PY'
import sys
from transformers import GPT2LMHeadModel
model = GPT2LMHeadModel.from_pretrained(sys.argv[1])
print(f"transformers loaded {sum(p.numel() for p in model.parameters()):,} parameters from {sys.argv[1]}")
PY

step "8/8 generate from the trained checkpoint (greedy, KV cache)"
gpt-generate --checkpoint "$OUT/run/checkpoints" --prompt "The history of the" --max-new-tokens 24 \
    --greedy --output "$OUT/generation.json"
echo "demo finished: outputs in $OUT/; data report: $OUT/report.html"
