#!/usr/bin/env bash
# Installs the tools the AWS Lambda target needs, outside the clone, keyed by
# version, and prints shell `export` lines for them:
#
#   eval "$(scripts/tools/lambda.sh)"
#
# exports
#   CARGO_LAMBDA_BIN  the cargo-lambda binary (`lambda watch`, the local runtime emulator)
#   CFN_LINT_BIN      cfn-lint, which lints template.yaml offline
#   PATH              with both tools' directories in front
#
# Installs into ${FAL_PROXY_TOOLS:-$HOME/.cache/fal-proxy/tools}/<tool>-<version>,
# each a Python venv made with `python3 -m venv`. cargo-lambda's PyPI package
# holds a prebuilt static binary, so `--no-deps` is enough for `watch` and for
# native builds (it leaves out zig, which only cross-compiling needs).
# Idempotent: a tool whose directory is complete is not installed again.
# Everything but the export lines goes to stderr.
set -euo pipefail

CARGO_LAMBDA_VERSION=1.9.2
CFN_LINT_VERSION=1.58.0

tools="${FAL_PROXY_TOOLS:-$HOME/.cache/fal-proxy/tools}"
python="${PYTHON:-python3}"

# install_venv <dir> <binary> <version check> <pip args...>
install_venv() {
  local dir="$1" bin="$2" check="$3"
  shift 3
  if [[ -x "$dir/bin/$bin" && -f "$dir/.complete" ]]; then
    return
  fi
  echo "installing $(basename "$dir") into $dir" >&2
  rm -rf "$dir"
  mkdir -p "$(dirname "$dir")"
  "$python" -m venv "$dir" >&2
  "$dir/bin/pip" install --quiet --disable-pip-version-check "$@" >&2
  # shellcheck disable=SC2086 # the check is words
  "$dir/bin/$bin" $check >&2
  touch "$dir/.complete"
}

cargo_lambda_dir="$tools/cargo-lambda-$CARGO_LAMBDA_VERSION"
cfn_lint_dir="$tools/cfn-lint-$CFN_LINT_VERSION"

install_venv "$cargo_lambda_dir" cargo-lambda "lambda --version" --no-deps "cargo-lambda==$CARGO_LAMBDA_VERSION"
install_venv "$cfn_lint_dir" cfn-lint --version "cfn-lint==$CFN_LINT_VERSION"

printf 'export CARGO_LAMBDA_BIN=%q\n' "$cargo_lambda_dir/bin/cargo-lambda"
printf 'export CFN_LINT_BIN=%q\n' "$cfn_lint_dir/bin/cfn-lint"
printf 'export PATH=%q:"$PATH"\n' "$cargo_lambda_dir/bin:$cfn_lint_dir/bin"
