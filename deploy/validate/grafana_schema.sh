#!/usr/bin/env bash
# deploy/validate/grafana_schema.sh — decodes every grafana/dashboards/*.json strictly with
# Grafana's own generated types (github.com/grafana/grafana-foundation-sdk/go, pinned in
# deploy/validate/grafana-schema/go.mod), since no Grafana server can run here.
#
#   deploy/validate/grafana_schema.sh [dashboard.json...]   default: grafana/dashboards/*.json
#
# Builds deploy/validate/grafana-schema from the Go module proxy into
# ~/.cache/tickflow/tools/bin/grafana-schema (TICKFLOW_TOOLS_HOME moves it), again only when its
# sources or the pinned SDK change. One PASS/FAIL line per dashboard; exits 1 on any FAIL.
# What is decoded strictly and what the SDK leaves open: grafana/README.md, "Checks".
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MODULE=$ROOT/deploy/validate/grafana-schema
TOOLS=${TICKFLOW_TOOLS_HOME:-$HOME/.cache/tickflow/tools}
BIN=$TOOLS/bin/grafana-schema
STAMP=$TOOLS/stamps/grafana-schema
SDK=github.com/grafana/grafana-foundation-sdk/go

fail() {
  echo "FAIL grafana/schema: $1"
  [ -z "${2:-}" ] || sed 's/^/    /' "$2" | tail -30
  exit 1
}

command -v go >/dev/null 2>&1 || fail "Go is not installed: the checker is built from the Go module proxy"
# -mod=mod: go.sum pins the SDK's hash; the module cache and proxy are the environment's.
export GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

want=$(cat "$MODULE"/go.mod "$MODULE"/go.sum "$MODULE"/*.go | sha256sum | cut -c1-16)
if ! [ -x "$BIN" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  mkdir -p "$(dirname "$BIN")" "$(dirname "$STAMP")"
  (cd "$MODULE" && go build -trimpath -ldflags='-s -w' -o "$BIN" .) >"$log" 2>&1 ||
    fail "building deploy/validate/grafana-schema (go build)" "$log"
  printf '%s\n' "$want" >"$STAMP"
fi

# The enum values are read from the SDK's source, which the build has put in the module cache.
# (go mod download is a no-op when it is there, and fetches it when the cache was cleaned.)
(cd "$MODULE" && go mod download "$SDK") >"$log" 2>&1 || fail "downloading $SDK (go mod download)" "$log"
sdk_dir=$(cd "$MODULE" && go list -m -f '{{.Dir}}' "$SDK" 2>"$log") || fail "locating $SDK (go list -m)" "$log"
[ -d "$sdk_dir" ] || fail "$SDK: no source directory in the module cache ('$sdk_dir')"

if [ $# -eq 0 ]; then
  set -- "$ROOT"/grafana/dashboards/*.json
fi
exec "$BIN" -sdk "$sdk_dir" "$@"
