"""S3 in IAM enforcing mode: the REST call a request is (method, path-style bucket and key, query),
and the authorization requests AWS makes for it, for the calls bake's shared state makes
(bake.toml [state]) and test set-up's bucket creation. Anything else is refused with a reason,
never waved through.

Actions and keys as the Service Authorization Reference lists them
(https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazons3.html):
- PutObject (s3:PutObject on the object; s3:if-none-match, s3:if-match, s3:x-amz-server-side-encryption,
  s3:x-amz-server-side-encryption-aws-kms-key-id from the headers). An object written under a KMS
  key also needs kms:GenerateDataKey on it, S3 calling KMS for the caller (kms:ViaService
  s3.<region>.amazonaws.com): https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingKMSEncryption.html#aws-managed-customer-managed-keys
- GetObject and HeadObject (s3:GetObject; a KMS-encrypted object also kms:Decrypt via S3).
- DeleteObject (s3:DeleteObject; s3:if-match).
- ListObjectsV2 (s3:ListBucket on the bucket; s3:prefix, s3:max-keys, s3:delimiter when given).
- CreateBucket (s3:CreateBucket on the bucket).
Bucket policies are not modelled (authz.py): the caller's identity policies decide."""

import urllib.parse

from . import authz_requests as R
from .authz_builders import builds
from .authz_requests import Req
from .policy import Unsupported
from .state import ACCOUNT

# Sub-resources (query parameters) that make a request another action: none is modelled.
_SUBRESOURCES = {"acl", "tagging", "versions", "versioning", "policy", "lifecycle", "cors", "encryption",
                 "uploads", "uploadId", "partNumber", "retention", "legal-hold", "object-lock", "attributes",
                 "restore", "select", "website", "logging", "notification", "replication", "location",
                 "ownershipControls", "publicAccessBlock", "delete", "accelerate", "analytics", "inventory",
                 "metrics", "intelligent-tiering", "requestPayment", "torrent"}


def _header(environ, name):
    return environ.get("HTTP_" + name.upper().replace("-", "_"))


def call_of(environ):
    """(action, params) of a path-style S3 request; Unsupported for what is not modelled."""
    path = environ.get("PATH_INFO", "/")
    bucket, _, key = path.lstrip("/").partition("/")
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    method = environ.get("REQUEST_METHOD", "GET")
    params = {"Bucket": bucket, "Key": key, "query": {k: v[0] for k, v in query.items()},
              "headers": {h: _header(environ, h) for h in (
                  "if-match", "if-none-match", "x-amz-server-side-encryption",
                  "x-amz-server-side-encryption-aws-kms-key-id") if _header(environ, h) is not None}}
    named = sorted(set(query) & _SUBRESOURCES)
    if not bucket:
        raise Unsupported("the sandbox does not model S3 calls on the service (ListBuckets)")
    if named:
        raise Unsupported(f"the sandbox does not model S3 sub-resource calls ({', '.join(named)})")
    if not key:
        if method == "PUT":
            return "CreateBucket", params
        if method == "GET" and query.get("list-type") == ["2"]:
            return "ListObjectsV2", params
        raise Unsupported(f"the sandbox does not model S3 {method} on a bucket other than CreateBucket and ListObjectsV2")
    if method == "PUT" and _header(environ, "x-amz-copy-source"):
        raise Unsupported("the sandbox does not model S3 CopyObject")
    action = {"PUT": "PutObject", "GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(method)
    if action is None:
        raise Unsupported(f"the sandbox does not model S3 {method} on an object")
    return action, params


def _object_arn(p):
    return f"arn:{R.PARTITION}:s3:::{p['Bucket']}/{p['Key']}"


def _bucket_arn(p):
    return f"arn:{R.PARTITION}:s3:::{p['Bucket']}"


def _kms_via_s3(region, key_id, action, note):
    k = R.kms_key(region, key_id)
    if k is None:
        return []  # an AWS managed key (aws/s3): its key policy governs its use by S3
    arn, aliases, _ = k
    vals = {"kms:ViaService": f"s3.{region}.amazonaws.com", "kms:CallerAccount": ACCOUNT,
            "kms:ResourceAliases": aliases or None, "aws:ResourceAccount": arn.split(":")[4]}
    return [Req(action, arn, "key", vals, R.TAG_FAMILIES, note=note, via="s3.amazonaws.com")]


def _stored_key(bucket, key):
    """The KMS key an existing object is encrypted under, if any (moto's S3)."""
    try:
        from moto.s3.models import s3_backends
        obj = s3_backends[ACCOUNT]["aws"].buckets[bucket].keys.get(key)
    except Exception:
        return None
    if obj is None or getattr(obj, "encryption", None) != "aws:kms":
        return None
    return getattr(obj, "kms_key_id", None)


@builds("s3:PutObject")
def s3_put_object(c):
    p, h = c.params, c.params["headers"]
    vals = {f"s3:{k}": v for k, v in h.items()}
    out = [Req(c.full, _object_arn(p), "object", vals)]
    if h.get("x-amz-server-side-encryption") == "aws:kms":
        out += _kms_via_s3(c.region, h.get("x-amz-server-side-encryption-aws-kms-key-id") or "alias/aws/s3",
                           "kms:GenerateDataKey", "object encryption")
    return out


@builds("s3:GetObject", "s3:HeadObject")
def s3_get_object(c):
    p = c.params
    out = [Req("s3:GetObject", _object_arn(p), "object", {})]
    key = _stored_key(p["Bucket"], p["Key"])
    if key:
        out += _kms_via_s3(c.region, key, "kms:Decrypt", "object decryption")
    return out


@builds("s3:DeleteObject")
def s3_delete_object(c):
    p = c.params
    vals = {"s3:if-match": p["headers"]["if-match"]} if "if-match" in p["headers"] else {}
    return [Req(c.full, _object_arn(p), "object", vals)]


@builds("s3:ListObjectsV2")
def s3_list_objects_v2(c):
    p = c.params
    vals = {f"s3:{k}": p["query"][k] for k in ("prefix", "max-keys", "delimiter") if k in p["query"]}
    return [Req("s3:ListBucket", _bucket_arn(p), "bucket", vals)]


@builds("s3:CreateBucket")
def s3_create_bucket(c):
    return [Req(c.full, _bucket_arn(c.params), "bucket", {})]
