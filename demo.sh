#!/usr/bin/env bash
# The demo: on a fresh machine, installs what it needs, starts the sandbox cloud on loopback, bakes
# the boxoffice role for staging with live progress, prints the manifest, and stops the sandbox.
# Nothing here reaches AWS: the AWS SDK inside bake talks to the sandbox through AWS_ENDPOINT_URL.
set -euo pipefail
cd "$(dirname "$0")"

say() { printf '\n==> %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

say "installing the sandbox's Python requirements (moto, pinned)"
python3 -m pip install -q -r tests/sandbox/requirements.txt
if ! command -v shellcheck >/dev/null 2>&1; then
  say "installing shellcheck (the tests lint every rendered step with it)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q shellcheck >/dev/null 2>&1 \
    || { as_root apt-get update -q >/dev/null 2>&1 && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q shellcheck >/dev/null 2>&1; } \
    || echo "    (could not install shellcheck; only the tests need it)"
fi

say "building bake (a cold build of the AWS SDK takes about 6 minutes on 2 cores)"
cargo build --quiet
bake=./target/debug/bake

state=$(mktemp -d)
cleanup() {
  if [ -f "$state/pid" ]; then kill "$(cat "$state/pid")" 2>/dev/null || true; fi
  rm -rf "$state"
}
trap cleanup EXIT

say "starting the sandbox cloud"
python3 tests/sandbox/sandbox.py --pid-file "$state/pid" --env-file "$state/env" >"$state/out" 2>"$state/log" &
for _ in $(seq 1 100); do [ -s "$state/env" ] && break; sleep 0.1; done
[ -s "$state/env" ] || { cat "$state/log" >&2; echo "the sandbox did not start" >&2; exit 1; }
set -a
# shellcheck source=/dev/null
. "$state/env"
set +a
echo "    $AWS_ENDPOINT_URL (pid $(cat "$state/pid"))"

say "once per account, as its administrator: bake bootstrap (the builder roles' permissions boundary)"
"$bake" bootstrap

say "bake plan boxoffice --env staging"
"$bake" plan boxoffice --env staging

say "bake build boxoffice --env staging"
"$bake" build boxoffice --env staging --manifest "$state/manifest.json"

say "the manifest"
cat "$state/manifest.json"

say "running it again changes nothing: same fingerprint, same source image"
"$bake" build boxoffice --env staging

say "done; stopping the sandbox"
