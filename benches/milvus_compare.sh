#!/usr/bin/env bash
# The same catalogue on the local store and on Milvus: ingest items/s on each, then 200
# search-by-item queries per attribute over HTTP on each (sequential, one client): queries/s
# and the mean top-10 overlap between the two stores' answers.
#
#   cargo build --release --features milvus --bin asen
#   ASEN_MILVUS_URL=milvus://127.0.0.1:19530 benches/milvus_compare.sh [MODEL_DIR] [SPLIT]
#
# Defaults: models/default, the valid split (1,332 images); attributes baseColour, articleType.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
model=${1:-$root/models/default}
split=${2:-valid}
url=${ASEN_MILVUS_URL:?set ASEN_MILVUS_URL=milvus://HOST:PORT}
data=${ASEN_SHARED_DIR:-$root/../shared}/data/fashion-product-images
asen=${ASEN_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/asen}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
awk -F, -v s="$split" 'NR == 1 || $2 == s' "$data/labels.csv" > "$work/items.csv"
catalogue=bench$$
echo "model: $model; split: $split ($(($(wc -l < "$work/items.csv") - 1)) images); cores: $(nproc); load: $(uptime | sed 's/.*load/load/')"
for store in local "$url"; do
  name=$([ "$store" = local ] && echo local || echo milvus)
  echo "== ingest, $name"
  "$asen" ingest --catalogue "$catalogue" --csv "$work/items.csv" --image-root "$data" \
    --data "$work/store" --store "$store" --model "$model" --report "$work/report-$name.csv" --quiet
  "$asen" serve --bind 127.0.0.1:0 --data "$work/store" --store "$store" --model "$model" \
    > "$work/serve-$name.out" 2> "$work/serve-$name.err" &
  pids+=($!)
  for _ in $(seq 1 120); do grep -q "listening on" "$work/serve-$name.out" && break; sleep 1; done
  sed -n 's/^asen listening on //p' "$work/serve-$name.out" > "$work/base-$name"
done
python3 - "$work" "$catalogue" <<'PY'
import csv, json, sys, time, urllib.request
work, catalogue = sys.argv[1], sys.argv[2]
ids = [r["id"] for r in csv.DictReader(open(f"{work}/items.csv"))]
queries = ids[:: max(1, len(ids) // 200)][:200]
base = {n: open(f"{work}/base-{n}").read().strip() for n in ("local", "milvus")}
def search(b, attribute, item):
    body = json.dumps({"attribute": attribute, "item_id": item, "k": 10}).encode()
    req = urllib.request.Request(f"{b}/v1/catalogues/{catalogue}/search", body,
                                 {"content-type": "application/json"})
    return [h["id"] for h in json.load(urllib.request.urlopen(req))["result"]["hits"]]
for attribute in ("baseColour", "articleType"):
    answers, rates = {}, {}
    for n, b in base.items():
        t = time.perf_counter()
        answers[n] = [search(b, attribute, q) for q in queries]
        rates[n] = len(queries) / (time.perf_counter() - t)
    overlap = sum(len(set(a) & set(m)) / 10 for a, m in zip(answers["local"], answers["milvus"])) / len(queries)
    print(f"{attribute}: {len(queries)} queries, mean top-10 overlap {overlap:.3f}; "
          f"queries/s local {rates['local']:.1f}, milvus {rates['milvus']:.1f}")
PY
