#!/bin/bash
# Secure usage push to the VK Cloud Marketplace API, or to `ibkit serve`'s
# emulator of it, with nothing but bash, openssl, curl and coreutils: one
# metric, encrypted as VK's documentation says (AES-256-CBC + PKCS#7 for the
# JSON; RSA-OAEP with SHA-256 and MGF1 SHA-256 for the AES key and IV, to
# the marketplace's public key), and the answer's signature verified.
#
#   push.sh URL TOKEN_FILE PUBLIC_KEY_PEM PARAM VALUE
#
# URL             https://cloud.vk.ru (the marketplace) or ibkit serve's URL
# TOKEN_FILE      the file holding the current access key (the marketplace
#                 agent's token file)
# PUBLIC_KEY_PEM  the marketplace's public key, SPKI ("PUBLIC KEY") PEM
# PARAM VALUE     the option (its YAML file's name) and the quantity used
#
# Environment: METRIC_ID (default random), BASE_DATE (RFC 3339, default
# now), ENDPOINT=push|decrypt (decrypt: checked, not counted),
# CURL_CA_BUNDLE (a self-signed service certificate).
#
# Prints the answer on stdout. Exit status: 0 accepted and the signature
# verifies, 1 refused (status and error on stderr), 2 the signature does
# not verify, 3 usage or local errors.
#
# The ephemeral AES key and IV are on openssl's command line (`enc -K -iv`
# takes them no other way), visible to local users while it runs; the
# access key is not (curl reads the header from a file).
set -euo pipefail

die() { printf 'push.sh: %s\n' "$1" >&2; exit 3; }
[ $# -eq 5 ] || die "usage: push.sh URL TOKEN_FILE PUBLIC_KEY_PEM PARAM VALUE"
url=${1%/} token_file=$2 pub=$3 param=$4 value=$5
endpoint=${ENDPOINT:-push}
[[ $param =~ ^[A-Za-z0-9_-]{1,64}$ ]] || die "PARAM must be [A-Za-z0-9_-], 1-64 characters"
[[ $value =~ ^(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$ ]] || die "VALUE must be a JSON number >= 0"
[[ $endpoint == push || $endpoint == decrypt ]] || die "ENDPOINT must be push or decrypt"
id=${METRIC_ID:-$(od -An -N6 -tu8 /dev/urandom | tr -d ' ')}
if [[ $id =~ ^(0|[1-9][0-9]{0,17})$ ]]; then
    id_json=$id
elif [[ $id =~ ^[A-Za-z0-9_.:-]{1,256}$ ]]; then
    id_json="\"$id\""
else
    die "METRIC_ID must be digits or [A-Za-z0-9_.:-]"
fi
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
base_date=${BASE_DATE:-$now}
[[ $base_date =~ ^[0-9T:.+Zz-]+$ ]] || die "BASE_DATE must be an RFC 3339 date-time"

umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

hex() { od -An -v -tx1 "$1" | tr -d ' \n'; }
b64url() { basenc --base64url -w0 "$1"; }
oaep() {
    openssl pkeyutl -encrypt -pubin -inkey "$pub" -pkeyopt rsa_padding_mode:oaep \
        -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256 -in "$1" -out "$2"
}

printf '{"payload":{"metrics":[{"id":%s,"param":"%s","value":%s}],"base_date":"%s"},"timestamp":"%s"}' \
    "$id_json" "$param" "$value" "$base_date" "$now" >"$tmp/plain.json"
openssl rand -out "$tmp/key" 32
openssl rand -out "$tmp/iv" 16
openssl enc -aes-256-cbc -K "$(hex "$tmp/key")" -iv "$(hex "$tmp/iv")" \
    -in "$tmp/plain.json" -out "$tmp/payload.bin"
oaep "$tmp/key" "$tmp/key.enc"
oaep "$tmp/iv" "$tmp/iv.enc"
printf '{"encryptedPayload":"%s","encryptedKey":"%s","encryptedIV":"%s"}' \
    "$(b64url "$tmp/payload.bin")" "$(b64url "$tmp/key.enc")" "$(b64url "$tmp/iv.enc")" >"$tmp/body.json"

key=$(tr -d ' \r\n' <"$token_file")
[ -n "$key" ] || die "$token_file is empty"
printf 'Authorization: Bearer %s\n' "$key" >"$tmp/auth"
status=$(curl -sS -o "$tmp/answer" -w '%{http_code}' -X POST \
    -H @"$tmp/auth" -H 'Content-Type: application/json' --data-binary @"$tmp/body.json" \
    "$url/marketplace/api/infra-api/v1-public/metrics/$endpoint") || die "curl failed"
answer=$(cat "$tmp/answer")
if [ "$status" != 200 ]; then
    printf 'HTTP %s: %s\n' "$status" "$answer" >&2
    exit 1
fi

# The signature covers the exact bytes of "payload" in the answer:
# {"payload":<signed bytes>,"signature":"<base64url>"}.
rest=${answer#'{"payload":'}
signed=${rest%',"signature":"'*}
sig=${rest##*',"signature":"'}
sig=${sig%'"}'}
printf '%s' "$signed" >"$tmp/signed"
printf '%s' "$sig" | basenc --base64url -d >"$tmp/sig" 2>/dev/null || {
    printf '%s\n' "$answer"
    echo "push.sh: the answer's signature is not base64url" >&2
    exit 2
}
if ! openssl dgst -sha256 -verify "$pub" -signature "$tmp/sig" "$tmp/signed" >/dev/null 2>&1; then
    printf '%s\n' "$answer"
    echo "push.sh: the answer's signature does not verify" >&2
    exit 2
fi
printf '%s\n' "$answer"
