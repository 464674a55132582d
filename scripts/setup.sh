#!/usr/bin/env bash
# Installs the system packages ibkit needs (Debian 12 / bookworm), idempotently.
#
# Usage: scripts/setup.sh [LIST...]
#   Always installs apt-packages.txt (what the demo needs) and the QEMU
#   packages from bookworm-backports (apt-backports-packages.txt); each LIST
#   adds apt-LIST-packages.txt next to this script (`test`, `bench`, ...).
# Run as root (or with sudo available).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

read_list() { grep -v '^\s*#' "$1" | grep -v '^\s*$' | tr '\n' ' '; }

lists=("$here/apt-packages.txt")
for name in "$@"; do
  f="$here/apt-$name-packages.txt"
  [ -f "$f" ] || { echo "setup: no package list $f" >&2; exit 2; }
  lists+=("$f")
done
plain=""
for f in "${lists[@]}"; do plain+=" $(read_list "$f")"; done
backports=$(read_list "$here/apt-backports-packages.txt")

missing=()
for p in $plain $backports; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all system packages present" >&2
  exit 0
fi
echo "setup: installing ${missing[*]}" >&2

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
# QEMU from backports first: packages of the plain lists (guestfish) depend
# on qemu-system-x86, and with bookworm's 7.2 chosen for them apt refuses to
# pair it with backports' qemu-utils ("held broken packages").
# shellcheck disable=SC2086 # the lists are word lists
$SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports $backports
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $plain
echo "setup: done" >&2
