#!/usr/bin/env bash
# Property-based API testing: starts `kiln serve` on a free port over a temporary data directory,
# makes an API key, and runs schemathesis over every operation of /openapi.json with every check
# (no server error, no undocumented status code or header, every answer matching its schema).
#
#   tools/schemathesis.sh                         # from the repository root; `make test` runs it
#   SCHEMATHESIS_EXAMPLES=200 tools/schemathesis.sh   # more examples per operation
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
EXAMPLES="${SCHEMATHESIS_EXAMPLES:-100}"
SEED="${SCHEMATHESIS_SEED:-20261125}"

cargo build --quiet -p kiln-cli --bin kiln --locked --manifest-path "$ROOT/Cargo.toml"
KILN="$ROOT/target/debug/kiln"

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# Only the variables below: a developer's own KILN_* must not change what is tested.
KILN_ENV=(-u KILN_PROVIDERS -u KILN_URL -u KILN_API_KEY
  KILN_DATA_DIR="$WORK/data" KILN_ADDR=127.0.0.1:0 KILN_LOG_FORMAT=pretty RUST_LOG=warn
  KILN_RATE_LIMIT_STANDARD=off KILN_MAX_IN_FLIGHT_STANDARD=off)

KEY="$(cd "$WORK" && env "${KILN_ENV[@]}" "$KILN" keys create --user schemathesis | tail -n1)"
# `exec`, so that the PID is the server's own and the cleanup stops the server itself.
(cd "$WORK" && exec env "${KILN_ENV[@]}" "$KILN" serve >"$WORK/serve.out" 2>"$WORK/serve.err") &
SERVER_PID=$!

BASE=""
for _ in $(seq 1 200); do
  BASE="$(sed -n 's/^kiln listening on //p' "$WORK/serve.out" | head -n1)"
  [[ -n "$BASE" ]] && break
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    cat "$WORK/serve.err" >&2
    echo "kiln serve exited before listening" >&2
    exit 1
  fi
  sleep 0.1
done
[[ -n "$BASE" ]] || { echo "kiln serve did not start within 20 s" >&2; exit 1; }
echo "schemathesis against $BASE ($EXAMPLES examples per operation, seed $SEED)"

start=$(date +%s)
status=0
# positive_data_acceptance ("a schema-valid request must succeed") is left out: some rules
# cannot be stated in JSON Schema (a webhook URL must resolve to a public address, a cursor must
# be one the API handed out, metadata must fit in 4 KiB), so valid-looking requests are rightly
# refused with a 400. Every other check runs, negative_data_rejection included.
"$VENV/bin/schemathesis" run "$BASE/openapi.json" \
  --checks all \
  --exclude-checks positive_data_acceptance \
  --header "Authorization: Bearer $KEY" \
  --max-examples "$EXAMPLES" \
  --seed "$SEED" \
  --generation-deterministic \
  --no-color \
  "$@" || status=$?
echo "schemathesis finished in $(( $(date +%s) - start )) s"
if [[ $status -ne 0 ]]; then
  echo "--- kiln serve stderr (last 40 lines)" >&2
  tail -n 40 "$WORK/serve.err" >&2
fi
exit $status
