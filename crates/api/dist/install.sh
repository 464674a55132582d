#!/bin/sh
# ibkit-agent installer, served by `ibkit serve` at /v1/agent/install.sh with
# the service's URL and certificate pin filled in. On a fresh VM, as root:
#
#   IBKIT_PAIRING_KEY=KEY sh -c "$(curl -fsS -g -k --pinnedpubkey 'sha256//…' \
#       https://SERVICE/v1/agent/install.sh || printf '\nexit 1')" ibkit-install \
#     --instance ID --host NAME [--server-url URL] [--memory-max SIZE]
#
# (`ibkit serve` prints this line for each host.) Not `curl … | sh`: when
# the download fails (wrong certificate pin, service down) sh would run an
# empty script and exit 0. Here a failed download ends in `exit 1` on a line
# of its own, and a download cut short runs nothing: the whole script is one
# function called on its last line, so a truncated copy is a syntax error.
#
# The pairing key comes from IBKIT_PAIRING_KEY (the environment is private
# to root) or --pairing-key-file FILE; --pairing-key KEY still works but
# puts the key on a command line, where every local user sees it (ps). The
# key is written to /etc/ibkit/pairing-key (0600), never to agent.toml, and
# the agent deletes it once it paired: it is single-use.
#
# Downloads the agent binary (same pin), writes /etc/ibkit/agent.toml, pairs
# with the service and starts the systemd unit.
# --server-url URL replaces the service URL filled in here, for both the
# download and the agent's config, when the VM reaches the service at
# another address (e.g. over a private bridge); the certificate pins still
# apply. Only http(s)://[A-Za-z0-9.:/_[]-] is accepted (exit 2 otherwise).
# --memory-max SIZE caps the unit's memory (default 512M).
# IBKIT_ROOT=DIR installs below DIR; IBKIT_NO_SYSTEMD=1 skips the unit
# (both for tests and images that bake the agent in).

ibkit_install() {
  set -eu
  SERVER_URL='@SERVER_URL@'
  CERT_SHA256='@CERT_SHA256@'
  CURL_PIN='@CURL_PIN@'

  instance='' host='' key='' key_file='' memory_max='512M' server_url=''
  root="${IBKIT_ROOT:-}"
  while [ $# -gt 0 ]; do
    case "$1" in
      --instance) instance="$2"; shift 2 ;;
      --host) host="$2"; shift 2 ;;
      --pairing-key)
        key="$2"; shift 2
        echo "ibkit install: warning: --pairing-key puts the key on the command line, where every local user can read it (ps); pass it as IBKIT_PAIRING_KEY=KEY or --pairing-key-file FILE" >&2
        ;;
      --pairing-key-file) key_file="$2"; shift 2 ;;
      --memory-max) memory_max="$2"; shift 2 ;;
      --server-url) server_url="$2"; shift 2 ;;
      *) echo "ibkit install: unknown argument $1" >&2; exit 2 ;;
    esac
  done
  if [ -n "$key_file" ]; then
    # `read` is a shell builtin: the key never becomes an argument.
    key=''
    IFS= read -r key < "$key_file" || [ -n "$key" ] || {
      echo "ibkit install: cannot read the pairing key from $key_file" >&2
      exit 2
    }
  elif [ -z "$key" ]; then
    key="${IBKIT_PAIRING_KEY:-}"
  fi
  # Not inherited by anything this script starts.
  unset IBKIT_PAIRING_KEY
  if [ -z "$instance" ] || [ -z "$host" ] || [ -z "$key" ]; then
    echo "ibkit install: --instance, --host and a pairing key (IBKIT_PAIRING_KEY or --pairing-key-file) are required" >&2
    exit 2
  fi
  for value in "$instance" "$host" "$memory_max"; do
    case "$value" in
      *[!A-Za-z0-9_.-]*) echo "ibkit install: invalid characters in '$value'" >&2; exit 2 ;;
    esac
  done
  case "$key" in
    *[!A-Za-z0-9_.-]*) echo "ibkit install: invalid characters in the pairing key" >&2; exit 2 ;;
  esac
  if [ -n "$server_url" ]; then
    # Only URL characters that need no quoting in curl's argument or agent.toml.
    case "$server_url" in
      http://?*|https://?*) ;;
      *) printf "ibkit install: --server-url must start with http:// or https://: '%s'\n" "$server_url" >&2; exit 2 ;;
    esac
    case "${server_url#*://}" in
      *[!]A-Za-z0-9.:/_[-]*)
        printf "ibkit install: invalid characters in --server-url '%s' (allowed after the scheme: A-Z a-z 0-9 . : / _ [ ] -)\n" "$server_url" >&2
        exit 2 ;;
    esac
    SERVER_URL="${server_url%/}"
  fi

  curl_pin=''
  [ -n "$CURL_PIN" ] && curl_pin="-k --pinnedpubkey $CURL_PIN"
  umask 022
  mkdir -p "$root/usr/local/bin" "$root/etc/ibkit"
  umask 077
  mkdir -p "$root/var/lib/ibkit-agent"
  chmod 0700 "$root/etc/ibkit"
  echo "ibkit install: downloading the agent from $SERVER_URL" >&2
  # shellcheck disable=SC2086 # curl_pin is two words on purpose
  # -g: brackets of an IPv6 address in the URL are not a curl glob.
  curl -fsS -g --retry 10 --retry-delay 2 --retry-connrefused $curl_pin \
    -o "$root/usr/local/bin/.ibkit-agent.new" "$SERVER_URL/v1/agent/binary"
  chmod 0755 "$root/usr/local/bin/.ibkit-agent.new"
  mv -f "$root/usr/local/bin/.ibkit-agent.new" "$root/usr/local/bin/ibkit-agent"

  # umask 077: both files are 0600. printf is a builtin (no argv).
  printf '%s\n' "$key" > "$root/etc/ibkit/pairing-key"
  cat > "$root/etc/ibkit/agent.toml" <<CONFIG
# Written by the ibkit installer. The pairing key file is deleted once the
# agent paired.
server_url = "$SERVER_URL"
server_cert_sha256 = "$CERT_SHA256"
instance = "$instance"
host = "$host"
pairing_key_file = "$root/etc/ibkit/pairing-key"
state_dir = "$root/var/lib/ibkit-agent"
CONFIG

  echo "ibkit install: pairing host $host of instance $instance" >&2
  "$root/usr/local/bin/ibkit-agent" pair --config "$root/etc/ibkit/agent.toml"
  rm -f "$root/etc/ibkit/pairing-key"

  if [ -n "${IBKIT_NO_SYSTEMD:-}" ]; then
    echo "ibkit install: done (no systemd unit, IBKIT_NO_SYSTEMD is set)" >&2
    exit 0
  fi
  umask 022
  cat > "$root/etc/systemd/system/ibkit-agent.service" <<'UNIT'
@AGENT_UNIT@
UNIT
  sed -i "s/@MEMORY_MAX@/$memory_max/" "$root/etc/systemd/system/ibkit-agent.service"
  systemctl daemon-reload
  systemctl enable --now ibkit-agent.service
  echo "ibkit install: ibkit-agent is running" >&2
}

ibkit_install "$@"
