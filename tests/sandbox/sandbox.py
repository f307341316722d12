#!/usr/bin/env python3
"""Starts bake's sandbox cloud: moto's server plus bake_sandbox, on loopback.

    python3 tests/sandbox/sandbox.py [--port 0] [--pid-file FILE] [--env-file FILE] [--enforce-iam]

It binds a free port (or the one given), seeds what a real account has, warms up, writes its PID,
prints the environment to use (AWS_ENDPOINT_URL=..., region, dummy credentials) and serves until
SIGTERM or SIGINT. With --enforce-iam (or BAKE_SANDBOX_ENFORCE_IAM=1) every call signed with an IAM
user's or an assumed role's keys is authenticated and authorized as AWS does it; the printed keys
stay the account's root. See tests/sandbox/README.md.
"""

import argparse
import os
import signal
import sys
import threading
import time
import urllib.request

os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
os.environ.setdefault("MOTO_ENABLE_AMI_VALIDATION", "true")
os.environ.setdefault("MOTO_IAM_LOAD_MANAGED_POLICIES", "false")
os.environ.setdefault("MOTO_ALLOW_NONEXISTENT_REGION", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

WARMUP = [
    ("ec2", "Action=DescribeImages&Owner.1=self&Version=2016-11-15"),
    ("ec2", "Action=DescribeInstances&Version=2016-11-15"),
    ("ec2", "Action=DescribeSubnets&Version=2016-11-15"),
    ("iam", "Action=ListRoles&Version=2010-05-08"),
    ("sts", "Action=GetCallerIdentity&Version=2011-06-15"),
    ("autoscaling", "Action=DescribeAutoScalingGroups&Version=2011-01-01"),
]


def warm_up(base, region):
    """The first call to each service builds moto's app and loads botocore's models (seconds);
    do it now, not in the first test."""
    for service, body in WARMUP:
        req = urllib.request.Request(base + "/", data=body.encode(), method="POST", headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": f"AWS4-HMAC-SHA256 Credential=testing/20260101/{region}/{service}/aws4_request, "
                             "SignedHeaders=host, Signature=0",
        })
        urllib.request.urlopen(req, timeout=60).read()
    req = urllib.request.Request(base + "/", data=b'{"Filters": []}', method="POST", headers={
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": "AmazonSSM.DescribeInstanceInformation",
        "Authorization": f"AWS4-HMAC-SHA256 Credential=testing/20260101/{region}/ssm/aws4_request, "
                         "SignedHeaders=host, Signature=0",
    })
    urllib.request.urlopen(req, timeout=60).read()
    urllib.request.urlopen(base + "/_sandbox/calls", timeout=10)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("--pid-file")
    ap.add_argument("--env-file", help="also write the environment lines here")
    ap.add_argument("--enforce-iam", action="store_true",
                    help="authorize every call not signed with the root keys as AWS does (IAM enforcing mode)")
    args = ap.parse_args()
    enforce = args.enforce_iam or os.environ.get("BAKE_SANDBOX_ENFORCE_IAM", "") not in ("", "0", "false")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        ap.error("the sandbox listens on loopback only")

    started = time.monotonic()
    import logging

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    from bake_sandbox import authz, seed
    from bake_sandbox.app import make_app

    server = make_server(args.host, args.port, make_app(), threaded=True)
    port = server.server_port
    base = f"http://{args.host}:{port}"
    seed.seed()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    authz.SETTINGS.enforcing = enforce
    warm_up(base, args.region)
    # Forget the warm-up's calls, so a test's call counts start at zero.
    delete = urllib.request.Request(base + "/_sandbox/calls", method="DELETE")
    urllib.request.urlopen(delete, timeout=10).read()

    env = [
        f"AWS_ENDPOINT_URL={base}",
        f"AWS_REGION={args.region}",
        f"AWS_DEFAULT_REGION={args.region}",
        "AWS_ACCESS_KEY_ID=testing",
        "AWS_SECRET_ACCESS_KEY=testing",
        "AWS_EC2_METADATA_DISABLED=true",
        f"BAKE_SANDBOX_PID={os.getpid()}",
    ]
    if enforce:
        env.append("BAKE_SANDBOX_ENFORCE_IAM=1")
    if args.pid_file:
        with open(args.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    if args.env_file:
        with open(args.env_file, "w") as f:
            f.write("\n".join(env) + "\n")
    print("\n".join(env), flush=True)
    print(f"# sandbox ready in {time.monotonic() - started:.2f}s; stop it with: kill {os.getpid()}", flush=True)

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(1.0):
        pass
    server.shutdown()
    if args.pid_file:
        try:
            os.unlink(args.pid_file)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
