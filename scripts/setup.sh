#!/usr/bin/env bash
# Installs every system package ibkit needs (Debian 12 / bookworm), idempotently.
# Package lists live next to this script: apt-packages.txt and
# apt-backports-packages.txt. Run as root (or with sudo available).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

read_list() { grep -v '^\s*#' "$1" | grep -v '^\s*$' | tr '\n' ' '; }

missing=()
for p in $(read_list "$here/apt-packages.txt") $(read_list "$here/apt-backports-packages.txt"); do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all system packages present"
  exit 0
fi
echo "setup: installing ${missing[*]}"

if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  $SUDO tee /etc/apt/sources.list.d/ibkit-backports.sources >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $(read_list "$here/apt-packages.txt")
$SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports $(read_list "$here/apt-backports-packages.txt")
echo "setup: done"
