#!/usr/bin/env bash
# Installs cargo-fuzz outside the clone, keyed by version, and prints shell
# `export` lines for it:
#
#   eval "$(scripts/tools/fuzz.sh)"
#
# exports
#   CARGO_FUZZ_BIN  the cargo-fuzz binary (run as `cargo +nightly fuzz ...`
#                   with its directory on PATH)
#   PATH            with its directory in front
#
# Installs into ${FAL_PROXY_TOOLS:-$HOME/.cache/fal-proxy/tools}/cargo-fuzz-<version>
# with `cargo install --locked --debug` (about 2 minutes on 2 cores; a debug
# build of the tool is fast enough: it only drives cargo). The fuzz targets
# themselves need the nightly toolchain (libFuzzer's sanitizer flags);
# `rustup toolchain install nightly --profile minimal` when it is missing.
# Idempotent. Everything but the export lines goes to stderr.
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2

tools="${FAL_PROXY_TOOLS:-$HOME/.cache/fal-proxy/tools}"
dir="$tools/cargo-fuzz-$CARGO_FUZZ_VERSION"

if [[ ! -x "$dir/bin/cargo-fuzz" || ! -f "$dir/.complete" ]]; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION into $dir" >&2
  rm -rf "$dir"
  mkdir -p "$dir"
  # Outside the project, so its rust-toolchain.toml does not apply.
  (cd "$tools" && cargo install --quiet --locked --debug --root "$dir" cargo-fuzz --version "$CARGO_FUZZ_VERSION") >&2
  "$dir/bin/cargo-fuzz" --version >&2
  touch "$dir/.complete"
fi
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal >&2

printf 'export CARGO_FUZZ_BIN=%q\n' "$dir/bin/cargo-fuzz"
printf 'export PATH=%q:"$PATH"\n' "$dir/bin"
