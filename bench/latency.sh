#!/usr/bin/env bash
# Issue 14's benchmarks (not tests): how late bake notices AWS's transitions, and what fifty
# bakes cost EC2's request budget. Needs a release build and the sandbox's requirements; run from
# the repository:  bench/latency.sh [runs] [only]   (default 5 runs per figure; only = latency,
# nodelay or fifty runs that figure alone)
#
#   1. detection latency: a one-step bake with the sandbox's delays (instance pending 3 s, agent
#      registration 2 s, command 1 s, stopping 3 s, image pending 5 s, shutting down 3 s: 17 s),
#      and again with every delay x3 (51 s): wall time minus the injected total, median
#   2. the same bake with no delay: wall time and API calls (the sandbox's call log)
#   3. fifty one-step roles baked concurrently with the delays on: the peak of EC2 Describe*
#      calls per second per region (the sandbox's call log), and the wall time against one bake
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
only=${2:-}
want() { [ -z "$only" ] || [ "$only" = "$1" ]; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet
bake="$PWD/$CARGO_TARGET_DIR/release/bake"
work=$(mktemp -d)
pid=""
stop() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; [ -n "${BENCH_KEEP:-}" ] && echo "kept $work" || rm -rf "$work"; }
trap stop EXIT

python3 tests/sandbox/sandbox.py --pid-file "$work/pid" --env-file "$work/env" >"$work/out" 2>"$work/log" &
for _ in $(seq 1 500); do [ -s "$work/env" ] && break; sleep 0.02; done
pid=$(cat "$work/pid")
set -a
# shellcheck source=/dev/null
. "$work/env"
set +a
ctl() { curl -s -X "$1" -H 'Content-Type: application/json' ${3:+-d "$3"} "$AWS_ENDPOINT_URL/_sandbox/$2"; }

# A project with one-step roles: cookbook `one` says hello.
proj="$work/proj"
mkdir -p "$proj/roles" "$proj/cookbooks/one/steps"
cp -r policies "$proj/"
cat >"$proj/cookbooks/one/cookbook.toml" <<'TOML'
description = "One step, for the benchmarks"

[[steps]]
name = "hello"
description = "Say hello"
timeout = "5m"
TOML
echo 'echo hello' >"$proj/cookbooks/one/steps/hello.sh.hbs"
role() {
  cat >"$proj/roles/$1.toml" <<TOML
description = "One step"
run_list = ["one"]

[source]
ssm_parameter = "/aws/service/canonical/ubuntu/server/22.04/stable/current/amd64/hvm/ebs-gp3/ami-id"

[image]
name = "$1-{{env}}-{{timestamp}}"

[env.staging]
TOML
}
role solo
"$bake" --root "$proj" validate >/dev/null
"$bake" --root "$proj" bootstrap >/dev/null  # the builders' permissions boundary, once per account

delays() {  # $1: factor
  ctl POST delays "{\"instance_pending\": $((3*$1)), \"agent_registration\": $((2*$1)), \"command_duration\": $((1*$1)), \"instance_stopping\": $((3*$1)), \"image_pending\": $((5*$1)), \"instance_shutting_down\": $((3*$1)), \"visibility_lag\": 0, \"iam_propagation\": 0, \"block_public_access\": 0}" >/dev/null
}
no_delays() {
  ctl POST delays '{"instance_pending": 0, "agent_registration": 0, "command_duration": 0, "instance_stopping": 0, "image_pending": 0, "instance_shutting_down": 0, "visibility_lag": 0, "iam_propagation": 0, "block_public_access": 0}' >/dev/null
}
# Runs one bake of role $1 (default `solo`); prints its wall seconds.
one_bake() {
  python3 - "$bake" "$proj" "${1:-solo}" <<'PY'
import subprocess, sys, time
t = time.monotonic()
p = subprocess.run([sys.argv[1], "--root", sys.argv[2], "build", sys.argv[3], "--env", "staging", "--force"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
if p.returncode != 0:
    sys.exit(f"bake failed: {p.stderr.decode()[-500:]}")
print(f"{time.monotonic() - t:.3f}")
PY
}
median() { python3 -c "import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(f'{statistics.median(v):.2f} (min {min(v):.2f}, max {max(v):.2f})')" "$@"; }

"$bake" --root "$proj" build solo --env staging >/dev/null 2>"$work/warm.err" || { tail -3 "$work/warm.err"; exit 1; }  # warm
want latency && for factor in 1 3; do
  delays "$factor"
  injected=$((17 * factor))
  over=()
  for _ in $(seq 1 "$runs"); do
    w=$(one_bake)
    over+=("$(python3 -c "print($w - $injected)")")
  done
  echo "## detection latency, delays x$factor (${injected} s injected): wall - injected = $(median "${over[@]}") s over $runs runs"
done

if want nodelay; then
no_delays
walls=()
for _ in $(seq 1 "$runs"); do walls+=("$(one_bake)"); done
sleep 1.1  # a new second: the image name ({{timestamp}}) is free, as in a real weekly bake
ctl DELETE calls >/dev/null
one_bake >/dev/null
calls=$(ctl GET calls | python3 -c "import json,sys; c=json.load(sys.stdin); print(c['count'], ', '.join(f'{k} {v}' for k, v in sorted(c['by_action'].items(), key=lambda kv: -kv[1])))")
echo "## no-delay one-step bake: wall $(median "${walls[@]}") s over $runs runs; API calls: $calls"
fi
want fifty || exit 0

# Fifty one-step roles in one process, delays on (`solo` set aside: fifty roles, not 51).
for i in $(seq -w 1 50); do role "r$i"; done
rm -f "$proj/roles/solo.toml"
delays 1
solo=$(one_bake r01)
ctl DELETE calls >/dev/null
t0=$(python3 -c 'import time; print(time.monotonic())')
"$bake" --root "$proj" build --all --env staging --jobs 50 --force >/dev/null 2>"$work/fifty.err" || { tail -5 "$work/fifty.err"; exit 1; }
all=$(python3 -c "import time; print(f'{time.monotonic() - $t0:.2f}')")
ctl GET calls >"$work/calls.json"
python3 - "$solo" "$all" "$work/calls.json" <<'PY'
import collections, json, sys
c = json.load(open(sys.argv[3]))
solo, all_ = float(sys.argv[1]), float(sys.argv[2])
ec2 = [x for x in c["calls"] if x["service"] == "ec2" and x["action"].startswith("Describe")]
per = collections.Counter((x["region"], int(x["t"])) for x in ec2)
peak = max(per.values()) if per else 0
by = collections.Counter(x["action"] for x in ec2)
print(f"## fifty one-step bakes at once (delays on): {all_:.2f}s = {all_ / solo:.2f}x one bake ({solo:.2f}s); "
      f"EC2 Describe* peak {peak}/s in one region, {len(ec2)} in all ({', '.join(f'{k} {v}' for k, v in by.most_common())}); "
      f"{c['count']} calls in all")
busy = collections.Counter()
for x in c["calls"]:
    busy[f"{x['service']}:{x['action']}"] += x["busy"]
print(f"   the sandbox (one lock around moto) was busy {c['busy']:.1f} s of {all_:.1f} s; most: "
      + ", ".join(f"{k} {v:.1f} s" for k, v in busy.most_common(6)))
PY
