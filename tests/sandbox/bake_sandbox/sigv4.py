"""AWS Signature Version 4, verified against the request exactly as it arrived.

moto's own check re-encodes form bodies before hashing them (`%20` becomes `+`), so it rejects
signatures that the Rust SDK computed correctly. Here nothing is re-encoded: the payload hash is
the SHA-256 of the raw body bytes, the canonical URI and query are built from the raw request
line, and the canonical headers from the headers as received. Only the header form of SigV4
(`Authorization: AWS4-HMAC-SHA256 ...`) is accepted; query-string (presigned) auth is refused.

https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html
"""

import hashlib
import hmac
import re
import urllib.parse
from datetime import datetime, timedelta, timezone

from botocore.utils import normalize_url_path

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = timedelta(minutes=15)
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+)\s*,\s*SignedHeaders=(?P<signed>[^,\s]+)\s*,"
    r"\s*Signature=(?P<signature>[0-9a-f]+)\s*$"
)


class SigV4Error(Exception):
    """A request whose signature is missing, malformed, stale or wrong. `kind` says which:
    `missing`, `incomplete`, `expired`, `mismatch`."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind
        self.message = message


class Credential:
    def __init__(self, access_key, date, region, service, signed_headers, signature):
        self.access_key = access_key
        self.date = date
        self.region = region
        self.service = service
        self.signed_headers = signed_headers
        self.signature = signature


def parse_authorization(value):
    """The parts of an `Authorization` header, or SigV4Error."""
    if not value:
        raise SigV4Error("missing", "Request is missing Authentication Token")
    m = _AUTH.match(value.strip())
    if not m:
        raise SigV4Error("incomplete", f"Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' "
                                       f"parameters of an AWS4-HMAC-SHA256 signature. Authorization={value}")
    parts = m.group("credential").split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise SigV4Error("incomplete", f"Credential should be scoped to a valid region and service: "
                                       f"'{m.group('credential')}'")
    signed = m.group("signed").split(";")
    return Credential(parts[0], parts[1], parts[2], parts[3], signed, m.group("signature"))


def _raw(s):
    """Bytes as received: werkzeug hands WSGI strings decoded as latin-1 (after its utf-8 dance)."""
    try:
        return s.encode("latin-1").decode("utf-8").encode("latin-1")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return s.encode("latin-1", "replace")


def _header(environ, name):
    if name == "content-type":
        return environ.get("CONTENT_TYPE")
    if name == "content-length":
        return environ.get("CONTENT_LENGTH")
    return environ.get("HTTP_" + name.upper().replace("-", "_"))


def _trim(value):
    return b" ".join(value.strip().split())


def _canonical_query(raw_query):
    pairs = []
    for part in raw_query.split(b"&"):
        if not part:
            continue
        k, _, v = part.partition(b"=")
        k = urllib.parse.quote(urllib.parse.unquote_to_bytes(k), safe="-_.~")
        v = urllib.parse.quote(urllib.parse.unquote_to_bytes(v), safe="-_.~")
        pairs.append((k, v))
    pairs.sort()
    return "&".join(f"{k}={v}" for k, v in pairs).encode()


S3_PAYLOAD_LITERALS = {"UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"}


def canonical_request(environ, body, cred):
    raw_uri = _raw(environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/"))
    if raw_uri.startswith(b"http://") or raw_uri.startswith(b"https://"):
        raw_uri = b"/" + raw_uri.split(b"/", 3)[-1] if raw_uri.count(b"/") >= 3 else b"/"
    raw_path, _, raw_query = raw_uri.partition(b"?")
    if cred.service == "s3":
        # S3: the path as sent, encoded once, never normalized (a key may hold `//` or `..`).
        canonical_uri = urllib.parse.quote(urllib.parse.unquote(raw_path.decode("latin-1") or "/"), safe="/~").encode()
    else:
        path = normalize_url_path(raw_path.decode("latin-1") or "/")
        canonical_uri = urllib.parse.quote(path, safe="/~").encode()
    headers = []
    for name in cred.signed_headers:
        value = _header(environ, name)
        if value is None:
            raise SigV4Error("incomplete", f"The request signature names header '{name}', which the request lacks.")
        headers.append(name.encode() + b":" + _trim(_raw(value)) + b"\n")
    declared = _header(environ, "x-amz-content-sha256")
    actual = hashlib.sha256(body).hexdigest()
    if cred.service == "s3" and declared in S3_PAYLOAD_LITERALS:
        # S3 signs these literals in place of the payload's hash (the payload is then unsigned,
        # or signed chunk by chunk): https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html
        actual = declared
    elif cred.service == "s3" and declared is None:
        raise SigV4Error("incomplete", "S3 requires the x-amz-content-sha256 header.")
    if declared is not None and declared != actual:
        raise SigV4Error("mismatch", "The provided 'x-amz-content-sha256' header does not match what was computed.")
    return b"\n".join([
        environ.get("REQUEST_METHOD", "GET").encode(),
        canonical_uri,
        _canonical_query(raw_query),
        b"".join(headers),
        ";".join(cred.signed_headers).encode(),
        actual.encode(),
    ])


def _hmac(key, msg):
    return hmac.new(key, msg.encode() if isinstance(msg, str) else msg, hashlib.sha256).digest()


def signature(secret, cred, amz_date, creq):
    scope = f"{cred.date}/{cred.region}/{cred.service}/aws4_request"
    to_sign = "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(creq).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + secret).encode(), cred.date), cred.region), cred.service), "aws4_request")
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), to_sign


def verify(environ, body, cred, secret, now=None):
    """Checks the request's signature with `secret`; SigV4Error when it does not hold."""
    signed = cred.signed_headers
    if signed != sorted(signed) or len(set(signed)) != len(signed) or any(h != h.lower() for h in signed):
        raise SigV4Error("mismatch", "SignedHeaders must be lowercase, sorted and without duplicates.")
    if "host" not in signed:
        raise SigV4Error("incomplete", "'Host' must be a signed header.")
    amz_date = _header(environ, "x-amz-date")
    if amz_date is None:
        raise SigV4Error("incomplete", "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' "
                                       "header (the sandbox accepts only X-Amz-Date).")
    if "x-amz-date" not in signed:
        raise SigV4Error("incomplete", "'X-Amz-Date' must be a signed header.")
    if _header(environ, "x-amz-security-token") is not None and "x-amz-security-token" not in signed:
        raise SigV4Error("incomplete", "'X-Amz-Security-Token' must be a signed header.")
    try:
        when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise SigV4Error("incomplete", f"X-Amz-Date '{amz_date}' is not in the form YYYYMMDD'T'HHMMSS'Z'.")
    if amz_date[:8] != cred.date:
        raise SigV4Error("mismatch", f"Credential should be scoped to a valid date: the scope says {cred.date}, "
                                     f"X-Amz-Date says {amz_date[:8]}.")
    now = now or datetime.now(timezone.utc)
    if abs(now - when) > MAX_SKEW:
        raise SigV4Error("expired", f"Signature expired: {amz_date} is now earlier than "
                                    f"{(now - MAX_SKEW).strftime('%Y%m%dT%H%M%SZ')} "
                                    f"({now.strftime('%Y%m%dT%H%M%SZ')} - 15 min.)")
    creq = canonical_request(environ, body, cred)
    expected, to_sign = signature(secret, cred, amz_date, creq)
    if not hmac.compare_digest(expected, cred.signature):
        raise SigV4Error("mismatch", "The request signature we calculated does not match the signature you provided. "
                                     "Check your AWS Secret Access Key and signing method. Consult the service "
                                     "documentation for details.")
