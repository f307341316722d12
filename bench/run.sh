#!/usr/bin/env bash
# Benchmarks (not tests): figures recorded in README.md. Needs a release build and the sandbox's
# requirements; run from the repository:  bench/run.sh [--quick]
#
#   1. sandbox start-up, warm-up included (3 runs)
#   2. `bake validate` of every example role (20 runs, release build)
#   3. one bake of boxoffice/staging with delays off: wall time and API calls by action
#   4. fifty roles baked concurrently in one process: wall time against one bake, peak RSS
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet
bake="$CARGO_TARGET_DIR/release/bake"
work=$(mktemp -d)
pids=()
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap stop_all EXIT

now() { python3 -c 'import time; print(time.monotonic())'; }
start_sandbox() {  # $1: state folder; prints seconds to ready
  mkdir -p "$1"
  local t0; t0=$(now)
  python3 tests/sandbox/sandbox.py --pid-file "$1/pid" --env-file "$1/env" >"$1/out" 2>"$1/log" &
  for _ in $(seq 1 300); do [ -s "$1/env" ] && break; sleep 0.02; done
  pids+=("$(cat "$1/pid")")
  python3 -c "print(f'{$(now) - $t0:.2f}')"
}
# Runs a command, prints "wall_seconds peak_rss_kib".
measure() { python3 - "$@" <<'PY'
import resource, subprocess, sys, time
t = time.monotonic()
p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
wall = time.monotonic() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
if p.returncode != 0:
    sys.exit(f"failed ({p.returncode}): {' '.join(sys.argv[1:])}")
print(f"{wall:.2f} {rss}")
PY
}

echo "## sandbox start-up (warm-up included)"
for i in 1 2 3; do
  s=$(start_sandbox "$work/start$i")
  echo "run $i: ${s}s"
  kill "$(cat "$work/start$i/pid")"
done

echo "## bake validate, every example role (release)"
python3 - "$bake" <<'PY'
import statistics, subprocess, sys, time
runs = []
for _ in range(20):
    t = time.perf_counter()
    subprocess.run([sys.argv[1], "validate"], check=True, stdout=subprocess.DEVNULL)
    runs.append((time.perf_counter() - t) * 1000)
print(f"median {statistics.median(runs):.1f} ms, max {max(runs):.1f} ms over 20 runs")
PY

sb="$work/sb"
start_sandbox "$sb" >/dev/null
set -a
# shellcheck source=/dev/null
. "$sb/env"
set +a
proj="$work/proj"
mkdir -p "$proj"
cp -r roles cookbooks policies "$proj/"

echo "## one bake: boxoffice/staging, delays off"
"$bake" --root "$proj" build boxoffice --env staging --output json >"$work/one.json" 2>/dev/null
read -r wall rss < <(measure "$bake" --root "$proj" build boxoffice --env staging --force)
python3 - "$work/one.json" "$wall" "$rss" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
calls = m["api_calls"]
print(f"wall {float(sys.argv[2]):.2f}s, peak RSS {int(sys.argv[3]) // 1024} MiB, {sum(calls.values())} API calls")
print("stages: " + ", ".join(f"{k} {v:.2f}s" for k, v in m["stages"].items()))
print("calls: " + ", ".join(f"{k} {v}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1])))
PY

echo "## fifty roles concurrently in one process"
fifty="$work/fifty"
mkdir -p "$fifty/roles"
cp -r cookbooks policies "$fifty/"
for i in $(seq -w 1 50); do
  sed -e "s/kaiju/kaiju$i/g" -e 's/image = { regions = \["us-west-2"\] }//' roles/kaiju.toml >"$fifty/roles/kaiju$i.toml"
done
cp "$fifty/roles/kaiju01.toml" "$proj/roles/solo.toml"
read -r one _ < <(measure "$bake" --root "$proj" build solo --env staging --force)
read -r all rss < <(measure "$bake" --root "$fifty" build --all --env staging --jobs 50)
python3 -c "print(f'one bake {float(\"$one\"):.2f}s; fifty bakes {float(\"$all\"):.2f}s = {float(\"$all\")/float(\"$one\"):.2f}x one; peak RSS {int(\"$rss\")//1024} MiB')"
