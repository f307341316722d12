"""The WSGI app: bake's control API under /_sandbox/, fault injection, a record of every call,
the clock, then moto (patched by the modules imported below)."""

import io
import json
import re
import time
import urllib.parse
import uuid

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

from . import autoscaling, control, ec2, iam, sns, ssm  # noqa: F401  (they patch moto on import)
from . import cbor  # CloudWatch's Smithy RPC v2 CBOR, as moto's JSON protocol
from . import authz  # IAM enforcing mode (off unless sandbox.py --enforce-iam)
from . import consistency  # noqa: F401,E402  (eventual consistency: wraps the patched actions, so last)
from .state import LOCK, STATE

QUERY = {"ec2", "iam", "autoscaling", "sts", "sns", "elasticloadbalancing"}

ERROR_XML_EC2 = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
    "<Message>{message}</Message></Error></Errors><RequestID>{rid}</RequestID></Response>"
)
ERROR_XML_QUERY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse><Error><Type>{kind}</Type><Code>{code}</Code>'
    "<Message>{message}</Message></Error><RequestId>{rid}</RequestId></ErrorResponse>"
)


def error_response(service, status, code, message):
    """An AWS error in the service's protocol: (status line, headers, body)."""
    rid = str(uuid.uuid4())
    if service == "ec2":
        body = ERROR_XML_EC2.format(code=code, message=message, rid=rid)
        ctype = "text/xml"
    elif service == "s3":
        body = f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>{rid}</RequestId></Error>"
        ctype = "application/xml"
    elif service in QUERY:
        kind = "Receiver" if status >= 500 else "Sender"
        body = ERROR_XML_QUERY.format(kind=kind, code=code, message=message, rid=rid)
        ctype = "text/xml"
    else:
        body = json.dumps({"__type": code, "message": message})
        ctype = "application/x-amz-json-1.1"
    reason = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Error")
    body = body.encode()
    headers = [("Content-Type", ctype), ("Content-Length", str(len(body))), ("x-amzn-RequestId", rid),
               ("x-amzn-ErrorType", code)]
    return f"{status} {reason}", headers, body


# Ids a call names (for the call log: which instances and images one call asked about).
_ID = re.compile(r"^(i|ami)-[0-9a-f]{8,17}$")
_FILTER_VALUE = re.compile(r"^Filter\.\d+\.Value\.\d+$")

# EC2 answers more than 200 filter values in one call with FilterLimitExceeded (not in the API
# reference; every tool that describes big fleets by id has met it: gossm #31, convox #2205).
EC2_FILTER_VALUES = 200


def describe(environ):
    """(service, region, action, ids) of an AWS request: ids are the instance and image ids a
    query-protocol request names (as ids or filter values)."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    service, region = "", "us-east-1"
    try:
        scope = auth.split("Credential=")[1].split(",")[0].split("/")
        region, service = scope[2], scope[3]
    except IndexError:
        pass
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    action = ""
    ids = []
    filter_values = 0
    if target:
        action = target.split(".", 1)[-1]
    else:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        action = (form.get("Action") or [""])[0]
        ids = sorted({v for vs in form.values() for v in vs if _ID.match(v)})
        filter_values = sum(len(vs) for k, vs in form.items() if _FILTER_VALUE.match(k))
        if not action:
            action = (urllib.parse.parse_qs(environ.get("QUERY_STRING", "")).get("Action") or [""])[0]
    return service, region, action, ids, filter_values


class SandboxApp:
    def __init__(self):
        self.moto = DomainDispatcherApplication(create_backend_app)

    def __call__(self, environ, start_response):
        if cbor.is_cbor(environ):
            target, op = cbor.to_json(environ)
            got = {}

            def capture(status, headers, exc_info=None):
                got["status"], got["headers"] = status, headers
                return lambda data: None

            body = b"".join(self._serve(environ, capture))
            status, headers, body = cbor.to_cbor(cbor.SERVICES.get(target, ""), op, got.get("status", "500 Error"), got.get("headers", []), body)
            start_response(status, headers)
            return [body]
        return self._serve(environ, start_response)

    def _serve(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_sandbox/iam"):
            with LOCK:
                code, obj = authz.control(environ["REQUEST_METHOD"], path.rstrip("/"),
                                          urllib.parse.parse_qs(environ.get("QUERY_STRING", "")))
            body = json.dumps(obj, default=str).encode()
            start_response(f"{code} {'OK' if code == 200 else 'Error'}",
                           [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if path.startswith("/_sandbox"):
            with LOCK:
                status, headers, body = control.handle(environ)
                if path.rstrip("/") == "/_sandbox/reset" and status.startswith("200"):
                    authz.clear()  # enforcing mode itself stays as it was
            start_response(status, headers)
            return [body]

        service, region, action, ids, filter_values = describe(environ)
        with LOCK:
            index = STATE.record_call(service, action, region, ids)
            fault = control.pick_fault(service, action, region)
        if fault and fault.get("latency_ms"):
            time.sleep(fault["latency_ms"] / 1000.0)
        if fault and fault.get("kind"):
            status, code, message = control.FAULT_KINDS[fault["kind"]](service)
            st, headers, body = error_response(service, status, code, message)
            start_response(st, headers)
            return [body]

        with LOCK:
            started = time.monotonic()
            try:
                return self._answer(environ, start_response, service, region, action, filter_values)
            finally:
                STATE.record_busy(index, time.monotonic() - started)

    def _answer(self, environ, start_response, service, region, action, filter_values):
        """The AWS answer to a request (called under LOCK)."""
        STATE.advance()
        refused = authz.check(environ, service, region, action)
        if refused is not None:
            start_response(refused[0], refused[1])
            return [refused[2]]
        if service == "ec2" and filter_values > EC2_FILTER_VALUES:
            st, headers, body = error_response(service, 400, "FilterLimitExceeded",
                                               "The maximum number of filter values specified on a single call is 200")
            start_response(st, headers)
            return [body]
        ssm.CURRENT.region = region
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        chunks = self.moto(environ, capture)
        body = b"".join(chunks)
        if hasattr(chunks, "close"):
            chunks.close()
        status = captured.get("status", "500 Internal Server Error")
        if status.startswith("500") and b"<html" in body[:200].lower():
            # moto answers an unimplemented action with an HTML page; answer like AWS would.
            status, headers, body = error_response(
                service, 400, "InvalidAction", f"The sandbox does not implement {service}:{action}"
            )
            start_response(status, headers)
            return [body]
        headers = [(k, v) for k, v in captured.get("headers", []) if k.lower() not in ("content-length", "transfer-encoding")]
        headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [body]


def make_app():
    return SandboxApp()
