#!/usr/bin/env bash
# Add an attribute to a live catalogue with a model that extends the catalogue's model.
#
#   examples/extend_pattern.sh BASE EXT [COMPARE]
#
# BASE: a model trained without `pattern` (asen train ... --attributes <the others>);
# EXT: BASE extended with `pattern` (asen train --extend BASE --attributes pattern);
# COMPARE (optional): a model trained with `pattern` from the start, e.g. models/default.
#
# Steps: ingest the valid split of the shared Fashion Product Images (1,332 photos) with BASE
# into a fresh data directory; serve it with EXT alone; add `pattern` live
# (POST /v1/catalogues/valid/attributes) and follow its progress; then search by `pattern`
# item to item over HTTP and print P@10 (share of the 10 nearest other items with the query's
# pattern label) for `pattern` and, as a check that nothing else moved, for `articleType`.
# With COMPARE, the same P@10 of a catalogue ingested with that model is printed beside.
set -euo pipefail

base=${1:?usage: $0 BASE EXT [COMPARE]}
ext=${2:?usage: $0 BASE EXT [COMPARE]}
compare=${3:-}
asen=${ASEN:-target/release/asen}
data=${SHARED:-../shared}/data/fashion-product-images
port=${PORT:-18091}
queries=${QUERIES:-300}
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
server=

awk -F, 'NR == 1 || $2 == "valid"' "$data/labels.csv" > "$work/valid.csv"

ingest() { # model dir
  "$asen" ingest --catalogue valid --csv "$work/valid.csv" --image-root "$data" \
    --data "$work/$2" --model "$1" --quiet
}

serve() { # model dir, data dir
  "$asen" serve --data "$work/$2" --model "$1" --bind "127.0.0.1:$port" \
    > "$work/server.log" 2>&1 &
  server=$!
  for _ in $(seq 1 600); do
    curl -sf "localhost:$port/v1/model" > /dev/null && return 0
    sleep 0.1
  done
  cat "$work/server.log"
  exit 1
}

stop() {
  kill "$server"
  wait "$server" 2>/dev/null || true
}

# P@10 of item-to-item searches on attribute $1, over the first $queries items with a label.
precision() {
  python3 - "$1" "$work/valid.csv" "$port" "$queries" <<'EOF'
import csv, json, sys, urllib.request
attribute, path, port, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rows = [r for r in csv.DictReader(open(path)) if r[attribute]]
total, models = 0.0, set()
for row in rows[:n]:
    body = json.dumps({"attribute": attribute, "item_id": row["id"], "k": 11,
                       "with_payload": True}).encode()
    req = urllib.request.Request(f"http://localhost:{port}/v1/catalogues/valid/search",
                                 body, {"content-type": "application/json"})
    answer = json.load(urllib.request.urlopen(req))
    models.add(answer.get("model"))
    hits = [h for h in answer["result"]["hits"] if h["id"] != row["id"]][:10]
    total += sum(h["payload"].get(attribute) == row[attribute] for h in hits) / 10
print(f"{attribute:12s} P@10 {total / min(n, len(rows)):.3f} over {min(n, len(rows))} queries "
      f"(answers from model {', '.join(sorted(m for m in models if m))})")
EOF
}

echo "ingest the valid split with the base model ($base)"
start=$(date +%s)
ingest "$base" data
echo "  $(( $(date +%s) - start )) s"
serve "$ext" data
curl -s "localhost:$port/v1/catalogues/valid" | python3 -c '
import json, sys; s = json.load(sys.stdin)["result"]["schema"]
print("catalogue built by", s["model"]["fingerprint"], "with", ", ".join(s["attributes"]))'
precision articleType

echo "add pattern live, served by the extension ($ext) alone"
curl -s -X POST "localhost:$port/v1/catalogues/valid/attributes" \
  -H 'content-type: application/json' -d '{"name":"pattern"}' > /dev/null
while true; do
  status=$(curl -s "localhost:$port/v1/catalogues/valid/reindex")
  state=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["result"]["state"]["state"])' "$status")
  [ "$state" = running ] || break
  sleep 2
done
echo "  $status"
curl -s "localhost:$port/v1/catalogues/valid" | python3 -c '
import json, sys; s = json.load(sys.stdin)["result"]["schema"]
print("catalogue now recorded as built by", s["model"]["fingerprint"], "with", ", ".join(s["attributes"]))'
precision pattern
precision articleType
stop

if [ -n "$compare" ]; then
  echo "the same split ingested with $compare"
  ingest "$compare" compare
  serve "$compare" compare
  precision pattern
  precision articleType
  stop
fi
