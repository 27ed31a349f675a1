#!/usr/bin/env bash
# End-to-end ingestion throughput of `asen ingest` on the shared Fashion Product Images.
#
#   cargo build --release --bin asen
#   benches/ingest.sh [MODEL_DIR] [SPLIT] [BATCH_SIZE]     (ASEN_BIN=path: another asen binary)
#
# Defaults: models/default, the valid split (1,332 images), batch 16. Ingests the split into a
# fresh temporary store, then runs the same command again (every item skipped by its sha256).
# The summary lines carry items/s and the share of wall time spent in the model's forward passes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
model=${1:-$root/models/default}
split=${2:-valid}
batch=${3:-16}
data=${ASEN_SHARED_DIR:-$root/../shared}/data/fashion-product-images
asen=${ASEN_BIN:-$root/target/release/asen}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
awk -F, -v s="$split" 'NR == 1 || $2 == s' "$data/labels.csv" > "$work/items.csv"
echo "model: $model; split: $split ($(($(wc -l < "$work/items.csv") - 1)) images); batch: $batch; cores: $(nproc)"
TIMEFORMAT="process wall %R s (model load and store open included), user %U s, sys %S s"
for pass in first re-run; do
  echo "== $pass"
  time "$asen" ingest --catalogue bench --csv "$work/items.csv" --image-root "$data" \
    --data "$work/store" --model "$model" --batch-size "$batch" --report "$work/report.csv" --quiet
done
