#!/usr/bin/env bash
# Installs Debian packages that are not installed yet (CI runs as root on a
# fresh-ish Debian machine): `scripts/tools/apt.sh redis-server chromium`.
# Runs `apt-get update` once, and only when something is missing.
# Everything it prints goes to stderr.
set -euo pipefail

missing=()
for package in "$@"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
echo "installing Debian packages: ${missing[*]}" >&2
$sudo apt-get update -q >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
