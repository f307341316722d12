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
p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
wall = time.monotonic() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
if p.returncode != 0:
    tail = p.stderr.decode(errors="replace").strip().splitlines()[-3:]
    sys.exit(f"failed ({p.returncode}): {' '.join(sys.argv[1:])}\n" + "\n".join(tail))
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
"$bake" --root "$proj" bootstrap >/dev/null  # the builders' permissions boundary, once per account

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

echo "## bake patch against a full bake (boxoffice/staging)"
read -r full _ < <(measure "$bake" --root "$proj" build boxoffice --env staging --force)
"$bake" --root "$proj" build boxoffice --env staging --force --output json >"$work/full.json" 2>/dev/null
"$bake" --root "$proj" patch boxoffice --env staging --packages openssl,libssl3 --force --output json >"$work/patch.json" 2>/dev/null
read -r patch _ < <(measure "$bake" --root "$proj" patch boxoffice --env staging --packages openssl,libssl3 --force)
python3 - "$work/full.json" "$work/patch.json" "$full" "$patch" <<'PY'
import json, sys
f, p = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
cf, cp = sum(f["api_calls"].values()), sum(p["api_calls"].values())
print(f"full bake {float(sys.argv[3]):.2f}s, {len(f['steps'])} steps, {cf} API calls; "
      f"patch {float(sys.argv[4]):.2f}s, {len(p['steps'])} step, {cp} API calls; "
      f"patch/full: {float(sys.argv[4])/float(sys.argv[3]):.2f} of the time, {cp/cf:.2f} of the calls")
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

echo "## bake roll: twenty groups (one canary, then the rest) against one group"
curl -s -X POST -H 'Content-Type: application/json' -d '{"time_scale": 0.01}' "$AWS_ENDPOINT_URL/_sandbox/time_scale" >/dev/null
# The set-up below uses what it creates at once (AWS does not promise that; bake does not rely on it).
curl -s -X POST -H 'Content-Type: application/json' -d '{"visibility_lag": 0}' "$AWS_ENDPOINT_URL/_sandbox/delays" >/dev/null
python3 - <<'PY'
import boto3, os
kw = dict(endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
ec2, asg, ssm = boto3.client("ec2", **kw), boto3.client("autoscaling", **kw), boto3.client("ssm", **kw)
ami = ssm.get_parameter(Name="/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id")["Parameter"]["Value"]
# Opted in to bake's role and env, as a team does (README, IAM): the group and its template.
lts = {}
for role in ("many", "one"):
    lt = ec2.create_launch_template(
        LaunchTemplateName=f"bench-{role}", LaunchTemplateData={"ImageId": ami, "InstanceType": "t3.small"},
        TagSpecifications=[{"ResourceType": "launch-template", "Tags": [{"Key": "bake:role", "Value": role}, {"Key": "bake:env", "Value": "staging"}]}])
    lts[role] = lt["LaunchTemplate"]["LaunchTemplateId"]
for i in range(21):
    role = "many" if i < 20 else "one"
    asg.create_auto_scaling_group(
        AutoScalingGroupName=f"bench_{i:02d}", LaunchTemplate={"LaunchTemplateId": lts[role], "Version": "1"},
        MinSize=0, MaxSize=4, DesiredCapacity=2, AvailabilityZones=["us-east-1a"],
        Tags=[{"Key": k, "Value": v, "PropagateAtLaunch": False} for k, v in (("bench", role), ("bake:role", role), ("bake:env", "staging"))])
PY
rollproj="$work/rollproj"
mkdir -p "$rollproj/roles"
cp -r cookbooks policies "$rollproj/"
rollout_many='rollout = { group_tags = { bench = "many" }, canaries = ["bench_00"], concurrency = 19, refresh = { min_healthy_percentage = 50, instance_warmup = "100s" } }'
rollout_one='rollout = { group_tags = { bench = "one" }, refresh = { min_healthy_percentage = 50, instance_warmup = "100s" } }'
sed -e "s/^\[env.staging\]$/[env.staging]\n$rollout_many/" roles/boxoffice.toml >"$rollproj/roles/many.toml"
sed -e "s/^\[env.staging\]$/[env.staging]\n$rollout_one/" roles/boxoffice.toml >"$rollproj/roles/one.toml"
ami=$(python3 -c "import json; print(json.load(open('$work/one.json'))['images']['us-east-1']['ami_id'])")
# Both are the process's wall time, start-up and group discovery included.
read -r one _ < <(measure "$bake" --root "$rollproj" roll one --env staging --ami "$ami" --manifest "$work/one-roll.json")
read -r many _ < <(measure "$bake" --root "$rollproj" roll many --env staging --ami "$ami" --manifest "$work/many.json")
python3 - "$work/one-roll.json" "$work/many.json" "$one" "$many" <<'PY'
import json, sys
o, m = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
one, many = float(sys.argv[3]), float(sys.argv[4])
calls = sum(m["api_calls"].values())
n = len(m["groups"])
print(f"one group {one:.2f}s, {sum(o['api_calls'].values())} API calls; {n} groups {many:.2f}s = {many/one:.2f}x one; "
      f"{calls} API calls, {calls/n:.1f} per group ({m['status']})")
print("calls: " + ", ".join(f"{k} {v}" for k, v in sorted(m["api_calls"].items(), key=lambda kv: -kv[1])))
PY

echo "## bake roll: twenty groups over two regions (ten each, one canary) against one group"
python3 - "$ami" <<'PY'
import boto3, os, sys, time
ami = sys.argv[1]
kw = dict(endpoint_url=os.environ["AWS_ENDPOINT_URL"], aws_access_key_id="testing", aws_secret_access_key="testing")
east = boto3.client("ec2", region_name="us-east-1", **kw)
tags = {t["Key"]: t["Value"] for t in east.describe_images(ImageIds=[ami])["Images"][0]["Tags"]}
tags["bake:role"] = "wide"  # the copy bake would have made for role wide (the image is another role's)
west_ami = None
for region in ("us-east-1", "us-west-2"):
    ec2, asg, ssm = (boto3.client(s, region_name=region, **kw) for s in ("ec2", "autoscaling", "ssm"))
    base = ssm.get_parameter(Name="/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id")["Parameter"]["Value"]
    if region == "us-west-2":
        # The bake's copy, as distribute makes it: the same tags, bake:id included.
        west_ami = ec2.copy_image(SourceRegion="us-east-1", SourceImageId=ami, Name=f"copy-{ami}")["ImageId"]
        ec2.create_tags(Resources=[west_ami], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        while ec2.describe_images(ImageIds=[west_ami])["Images"][0]["State"] != "available":
            time.sleep(0.1)
    lt = ec2.create_launch_template(
        LaunchTemplateName="bench-wide", LaunchTemplateData={"ImageId": base, "InstanceType": "t3.small"},
        TagSpecifications=[{"ResourceType": "launch-template", "Tags": [{"Key": "bake:role", "Value": "wide"}, {"Key": "bake:env", "Value": "staging"}]}])
    for i in range(10):
        asg.create_auto_scaling_group(
            AutoScalingGroupName=f"wide_{region[-1]}{i:02d}", LaunchTemplate={"LaunchTemplateId": lt["LaunchTemplate"]["LaunchTemplateId"], "Version": "1"},
            MinSize=0, MaxSize=4, DesiredCapacity=2, AvailabilityZones=[f"{region}a"],
            Tags=[{"Key": k, "Value": v, "PropagateAtLaunch": False} for k, v in (("bench", "wide"), ("bake:role", "wide"), ("bake:env", "staging"))])
PY
rollout_wide='rollout = { group_tags = { bench = "wide" }, canaries = ["wide_100"], concurrency = 19, refresh = { min_healthy_percentage = 50, instance_warmup = "100s" } }'
# boxoffice/staging copies to us-west-2: the roll covers both regions.
sed -e "s/^\[env.staging\]$/[env.staging]\n$rollout_wide/" roles/boxoffice.toml >"$rollproj/roles/wide.toml"
read -r wide _ < <(measure "$bake" --root "$rollproj" roll wide --env staging --ami "$ami" --manifest "$work/wide.json")
python3 - "$work/wide.json" "$one" "$wide" <<'PY'
import json, sys
m, one, wide = json.load(open(sys.argv[1])), float(sys.argv[2]), float(sys.argv[3])
calls, n = sum(m["api_calls"].values()), len(m["groups"])
print(f"{n} groups in {', '.join(m['regions'])}: {wide:.2f}s = {wide/one:.2f}x one group; {calls} API calls, {calls/n:.1f} per group ({m['status']})")
PY

echo "## bake roll: twenty groups over two regions and two accounts (five in each, one canary) against one group"
acct=210987654321
role_arn=$(curl -s -X POST -H 'Content-Type: application/json' -d "{\"account\": \"$acct\", \"role\": \"bake-target\"}" "$AWS_ENDPOINT_URL/_sandbox/accounts" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["arn"])')
accts_ami=$(python3 - "$ami" "$acct" "$role_arn" <<'PY'
import boto3, os, sys, time
ami, acct, role_arn = sys.argv[1:4]
kw = dict(endpoint_url=os.environ["AWS_ENDPOINT_URL"], aws_access_key_id="testing", aws_secret_access_key="testing")
home = {r: {s: boto3.client(s, region_name=r, **kw) for s in ("ec2", "autoscaling", "ssm", "kms")} for r in ("us-east-1", "us-west-2")}
# The bake's images as a shared bake has them: under a customer managed key in each region (AWS
# shares nothing under aws/ebs), tagged for role accts, shared with the workload account.
tags = {t["Key"]: t["Value"] for t in home["us-east-1"]["ec2"].describe_images(ImageIds=[ami])["Images"][0]["Tags"]}
tags["bake:role"] = "accts"
def copy(region, source_region, source):
    ec2 = home[region]["ec2"]
    key = home[region]["kms"].create_key(Description="golden")["KeyMetadata"]["Arn"]
    new = ec2.copy_image(SourceRegion=source_region, SourceImageId=source, Name=f"accts-{region}-{ami}", Encrypted=True, KmsKeyId=key)["ImageId"]
    while ec2.describe_images(ImageIds=[new])["Images"][0]["State"] != "available":
        time.sleep(0.1)
    ec2.create_tags(Resources=[new], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    ec2.modify_image_attribute(ImageId=new, LaunchPermission={"Add": [{"UserId": acct}]})
    snap = ec2.describe_images(ImageIds=[new])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    ec2.modify_snapshot_attribute(SnapshotId=snap, CreateVolumePermission={"Add": [{"UserId": acct}]})
    return new
east = copy("us-east-1", "us-east-1", ami)
copy("us-west-2", "us-east-1", east)
c = boto3.client("sts", region_name="us-east-1", **kw).assume_role(RoleArn=role_arn, RoleSessionName="bench")["Credentials"]
kb = dict(endpoint_url=os.environ["AWS_ENDPOINT_URL"], aws_access_key_id=c["AccessKeyId"], aws_secret_access_key=c["SecretAccessKey"], aws_session_token=c["SessionToken"])
for who, creds in (("h", kw), ("w", kb)):
    for region in ("us-east-1", "us-west-2"):
        ec2, asg = boto3.client("ec2", region_name=region, **creds), boto3.client("autoscaling", region_name=region, **creds)
        ssm = boto3.client("ssm", region_name=region, **creds)
        base = ssm.get_parameter(Name="/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id")["Parameter"]["Value"]
        lt = ec2.create_launch_template(
            LaunchTemplateName="bench-accts", LaunchTemplateData={"ImageId": base, "InstanceType": "t3.small"},
            TagSpecifications=[{"ResourceType": "launch-template", "Tags": [{"Key": "bake:role", "Value": "accts"}, {"Key": "bake:env", "Value": "staging"}]}])
        for i in range(5):
            asg.create_auto_scaling_group(
                AutoScalingGroupName=f"accts_{who}{region[-1]}{i}", LaunchTemplate={"LaunchTemplateId": lt["LaunchTemplate"]["LaunchTemplateId"], "Version": "1"},
                MinSize=0, MaxSize=4, DesiredCapacity=2, AvailabilityZones=[f"{region}a"],
                Tags=[{"Key": k, "Value": v, "PropagateAtLaunch": False} for k, v in (("bench", "accts"), ("bake:role", "accts"), ("bake:env", "staging"))])
print(east)
PY
)
python3 - "$rollproj/roles/accts.toml" "$acct" "$role_arn" <<'PY'
import sys
path, acct, role_arn = sys.argv[1:4]
key = "mrk-1234abcd12ab34cd56ef1234567890ab"
s = open("roles/boxoffice.toml").read()
s = s.replace("encrypted = true\n", f'encrypted = true\nkms_key_id = "{key}"\n', 1)
s = s.replace('[env.staging]\nimage = { regions = ["us-west-2"] }', f'[env.staging]\nimage = {{ regions = ["us-west-2"], kms_keys = {{ us-west-2 = "{key}" }} }}\n'
              f'rollout = {{ group_tags = {{ bench = "accts" }}, canaries = ["accts_h10"], concurrency = 19, '
              f'refresh = {{ min_healthy_percentage = 50, instance_warmup = "100s" }}, accounts = {{ "{acct}" = {{ role_arn = "{role_arn}" }} }} }}', 1)
open(path, "w").write(s)
PY
read -r accts _ < <(measure "$bake" --root "$rollproj" roll accts --env staging --ami "$accts_ami" --manifest "$work/accts.json")
python3 - "$work/accts.json" "$one" "$accts" <<'PY'
import json, sys
m, one, wall = json.load(open(sys.argv[1])), float(sys.argv[2]), float(sys.argv[3])
calls, n = sum(m["api_calls"].values()), len(m["groups"])
print(f"{n} groups in {'; '.join(m['regions'])}: {wall:.2f}s = {wall/one:.2f}x one group; {calls} API calls, {calls/n:.1f} per group, "
      f"{sum(v for k, v in m['api_calls'].items() if k.startswith('sts'))} STS ({m['status']})")
PY
