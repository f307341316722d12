"""Smithy RPC v2 CBOR, which the AWS SDK for Rust speaks to CloudWatch, in front of moto, which
answers CloudWatch's JSON protocol: a request `POST /service/<Service>/operation/<Op>` with
`smithy-protocol: rpc-v2-cbor` and a CBOR body becomes the JSON request moto parses
(`X-Amz-Target: <Service>.<Op>`, `application/x-amz-json-1.0`), and moto's JSON answer (or error)
goes back as CBOR, timestamps as tag 1 (epoch seconds), per the protocol's specification
(https://smithy.io/2.0/additional-specs/protocols/smithy-rpc-v2.html)."""

import datetime
import io
import json

import botocore.session
import cbor2

_MODELS = {}

# The services that speak it to bake: their JSON target prefix → botocore's name.
SERVICES = {"GraniteServiceVersion20100801": "cloudwatch"}


def is_cbor(environ):
    return environ.get("HTTP_SMITHY_PROTOCOL", "").lower() == "rpc-v2-cbor"


def _model(service):
    if service not in _MODELS:
        _MODELS[service] = botocore.session.get_session().get_service_model(service)
    return _MODELS[service]


def _plain(v):
    """CBOR's decoded values as JSON's: datetimes as epoch seconds, bytes as text."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, datetime.datetime):
        return v.timestamp()
    if isinstance(v, cbor2.CBORTag) and v.tag == 1:
        return float(v.value)
    if isinstance(v, (bytes, bytearray)):
        return v.decode("utf-8", "replace")
    return v


def _typed(v, shape):
    """JSON's answer as CBOR's: timestamps (by the output shape) as datetimes, encoded as tag 1."""
    if shape is None or v is None:
        return v
    t = shape.type_name
    if t == "structure" and isinstance(v, dict):
        return {k: _typed(x, shape.members.get(k)) for k, x in v.items()}
    if t == "list" and isinstance(v, list):
        return [_typed(x, shape.member) for x in v]
    if t == "map" and isinstance(v, dict):
        return {k: _typed(x, shape.value) for k, x in v.items()}
    if t == "timestamp":
        if isinstance(v, (int, float)):
            return datetime.datetime.fromtimestamp(v, tz=datetime.timezone.utc)
        if isinstance(v, str):
            try:
                return datetime.datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                return v
    return v


def to_json(environ):
    """Rewrites `environ` (a CBOR request) into moto's JSON request; returns (service, operation)."""
    parts = environ.get("PATH_INFO", "").strip("/").split("/")
    # service/<ServiceShape>/operation/<Operation>
    target, op = (parts[1], parts[3]) if len(parts) == 4 and parts[0] == "service" and parts[2] == "operation" else ("", "")
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length) if length else b""
    params = _plain(cbor2.loads(raw)) if raw else {}
    body = json.dumps(params or {}).encode()
    environ["PATH_INFO"] = "/"
    environ["CONTENT_TYPE"] = "application/x-amz-json-1.0"
    environ["HTTP_X_AMZ_TARGET"] = f"{target}.{op}"
    environ["CONTENT_LENGTH"] = str(len(body))
    environ["wsgi.input"] = io.BytesIO(body)
    return target, op


def to_cbor(service, op, status, headers, body):
    """moto's JSON answer as the CBOR one: (status, headers, body)."""
    try:
        obj = json.loads(body or b"{}")
    except ValueError:
        obj = {"__type": "InternalFailure", "message": body.decode("utf-8", "replace")[:500]}
    if status.startswith("2"):
        try:
            shape = _model(service).operation_model(op).output_shape
        except Exception:  # an operation botocore does not know: send as is
            shape = None
        obj = _typed(obj, shape)
    else:
        code = str(obj.get("__type") or obj.get("code") or "InternalFailure").split("#")[-1]
        obj = {"__type": code, "message": obj.get("message") or obj.get("Message") or ""}
    out = cbor2.dumps(obj, datetime_as_timestamp=True, timezone=datetime.timezone.utc)
    keep = [(k, v) for k, v in headers if k.lower() not in ("content-type", "content-length", "transfer-encoding")]
    return status, keep + [("Content-Type", "application/cbor"), ("smithy-protocol", "rpc-v2-cbor"), ("Content-Length", str(len(out)))], out
