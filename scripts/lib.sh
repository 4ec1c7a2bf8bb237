# Shared by scripts/test and scripts/demo: build prerequisites and the shared cargo target dir.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# One target directory outside the clone, shared by every checkout, script and CI run.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tickflow/target}

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }

# The C toolchain and headers that rdkafka (librdkafka, built from source) and openssl need.
ensure_build_deps() {
  command -v cargo >/dev/null 2>&1 || { log "cargo is not installed: install Rust (rustup) first"; exit 1; }
  local missing=() pkg
  for pkg in build-essential pkg-config libssl-dev zlib1g-dev cmake curl; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing build dependencies: ${missing[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  fi
}

# Exports the stack's endpoints (TICKFLOW_KAFKA__BOOTSTRAP_SERVERS, ...) into this shell.
export_stack_env() {
  local line
  while IFS= read -r line; do export "${line?}"; done < <("$ROOT/scripts/stack" env)
}

# cargo-machete (pinned, from crates.io) in ~/.cache/tickflow/tools/cargo/bin: finds dependencies
# a crate declares and never uses. Prints the binary's path.
CARGO_MACHETE_VERSION=0.9.2
ensure_cargo_machete() {
  local root=${TICKFLOW_TOOLS_HOME:-$HOME/.cache/tickflow/tools}/cargo
  local bin=$root/bin/cargo-machete
  if ! [ -x "$bin" ] || ! "$bin" --version 2>/dev/null | grep -q "$CARGO_MACHETE_VERSION"; then
    log "installing cargo-machete $CARGO_MACHETE_VERSION from crates.io (about a minute)"
    cargo install --quiet --locked "cargo-machete@$CARGO_MACHETE_VERSION" --root "$root" >&2
  fi
  printf '%s\n' "$bin"
}

# The shared target directory only grows (every clone, profile and test binary); incremental
# caches are most of what it keeps and are rebuilt on demand. Below 10 GiB free on its file
# system, they are dropped (the next build is slower, not wrong); below 4 GiB after that the run
# stops here rather than failing later in the middle of a build with "No space left".
ensure_disk_space() {
  local dir=$CARGO_TARGET_DIR avail_kib
  mkdir -p "$dir"
  avail_kib=$(df -Pk "$dir" | awk 'NR == 2 {print $4}')
  if [ "$avail_kib" -lt $((10 * 1024 * 1024)) ]; then
    log "only $((avail_kib / 1024 / 1024)) GiB free beside $dir: removing its incremental caches ($(du -sh "$dir"/*/incremental 2>/dev/null | awk '{print $1}' | paste -sd+ -))"
    rm -rf "$dir"/*/incremental
    avail_kib=$(df -Pk "$dir" | awk 'NR == 2 {print $4}')
  fi
  if [ "$avail_kib" -lt $((4 * 1024 * 1024)) ]; then
    log "only $((avail_kib / 1024 / 1024)) GiB free beside $dir: free some space (cargo clean, or scripts/images --prune)"
    exit 1
  fi
}
