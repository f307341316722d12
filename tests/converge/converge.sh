#!/usr/bin/env bash
# Converges a role's rendered steps in a real Debian 12 root filesystem (a chroot), twice, and
# checks that every step succeeds both times and that the second run changes nothing.
#
#   tests/converge/converge.sh BAKE PROJECT ROLE ENV
#
# Needs root, debootstrap and the Debian mirror (deb.debian.org). The base system is cached in
# $BAKE_CONVERGE_CACHE (default /var/tmp/bake-converge); each run works on a fresh copy, removed
# at the end unless BAKE_CONVERGE_KEEP=1 (then its path is printed last, for inspection; the
# caller unmounts its /proc and removes it).
# What a chroot cannot do is skipped by the steps themselves (they check bake_systemd): starting
# services, pulling images, logging in to a registry.
set -euo pipefail
bake=$1 project=$2 role=$3 env=$4
# Exit 77: this machine cannot do it (not root, no debootstrap, the mirror out of reach); the
# test reports a skip. Any other failure is the cookbooks'.
skip() { echo "skip: $*" >&2; exit 77; }
[ "$(id -u)" = 0 ] || skip "not root"
command -v debootstrap >/dev/null || skip "debootstrap is not installed (apt-get install debootstrap)"
command -v chroot >/dev/null || skip "no chroot"
cache=${BAKE_CONVERGE_CACHE:-/var/tmp/bake-converge}
base="$cache/bookworm-cloud"
mirror=${BAKE_CONVERGE_MIRROR:-http://deb.debian.org/debian}

if [ ! -f "$base/.ready" ]; then
  rm -rf "$base"
  mkdir -p "$cache"
  debootstrap --variant=minbase bookworm "$base" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || skip "debootstrap from $mirror failed (see $cache/debootstrap.log)"
  # What a Debian cloud image has and minbase lacks: systemd (systemctl), certificates.
  cp /etc/resolv.conf "$base/etc/resolv.conf"
  chroot "$base" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends systemd ca-certificates >>"$cache/debootstrap.log" 2>&1 \
    || skip "installing systemd into the base system failed (see $cache/debootstrap.log)"
  chroot "$base" apt-get clean
  touch "$base/.ready"
fi

work=$(mktemp -d)
root="$work/root"
cleanup() {
  if [ "${BAKE_CONVERGE_KEEP:-}" = 1 ]; then
    echo "kept: $root"
    return
  fi
  umount "$root/proc" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cp -a "$base" "$root"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# No daemon starts in a chroot: invoke-rc.d asks this first.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
mount -t proc proc "$root/proc"

"$bake" --root "$project" render "$role" --env "$env" --output json >"$work/steps.json"
python3 - "$work/steps.json" "$work" <<'PY'
import json, sys
for i, s in enumerate(json.load(open(sys.argv[1]))):
    with open(f"{sys.argv[2]}/step-{i:02d}.sh", "w") as f:
        f.write(s["script"])
    with open(f"{sys.argv[2]}/step-{i:02d}.name", "w") as f:
        f.write(s["step"])
PY

snapshot() {  # every file bake may write, with its content hash and mode
  # shellcheck disable=SC2016 # expanded inside the chroot
  chroot "$root" sh -c 'find /etc /usr/local /srv /var/lib/bake -xdev -type f 2>/dev/null | LC_ALL=C sort | while read -r f; do printf "%s %s " "$(stat -c %a "$f")" "$f"; sha256sum <"$f"; done' |
    grep -v -e ' /etc/ld.so.cache ' -e ' /var/lib/bake/apt-updated '
}

run_all() {  # $1: pass number
  local n=0
  for script in "$work"/step-*.sh; do
    name=$(cat "${script%.sh}.name")
    cp "$script" "$root/tmp/bake-step.sh"
    if ! chroot "$root" bash /tmp/bake-step.sh >"$work/out-$1-$n.log" 2>&1; then
      echo "FAIL pass $1: $name" >&2
      tail -n 40 "$work/out-$1-$n.log" >&2
      exit 1
    fi
    echo "ok   pass $1: $name"
    n=$((n + 1))
  done
}

run_all 1
snapshot >"$work/after-1"
run_all 2
snapshot >"$work/after-2"
if grep -l '^bake: wrote ' "$work"/out-2-*.log >/dev/null 2>&1; then
  echo "FAIL: the second run wrote files:" >&2
  grep -h '^bake: wrote ' "$work"/out-2-*.log >&2
  exit 1
fi
if ! diff -u "$work/after-1" "$work/after-2" >&2; then
  echo "FAIL: the second run changed the files above" >&2
  exit 1
fi
steps=$(find "$work" -maxdepth 1 -name 'step-*.sh' | wc -l)
echo "converged $role/$env: $steps steps, twice; the second run changed nothing"
