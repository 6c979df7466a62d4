"""Checks kzhook's HTTP responses against docs/openapi.json (Python 3, jsonschema + referencing).

    check_response(method, path_with_query, status, headers, body_bytes)

finds the documented operation for the request (path templates; fixed segments compared
case-insensitively; empty segments such as the doubled leading slash of `//v1/...` ignored, as the
server routes them) and raises AssertionError, naming the operation, the status and what failed,
unless:
  - the status is documented for that operation (exactly, as a range such as 4XX, or `default`);
    a request that reaches no operation is checked against `x-kzhook-unrouted-responses`
    (unknown path: 404; known path, other method: 405);
  - every header the response documents as required is present and valid (429 always needs
    Retry-After, 405 always needs Allow, and Allow must list exactly the path's methods);
  - the Content-Type matches a documented media type (a response without content must have no body);
  - a JSON body parses (no repeated keys) and validates against the documented schema, with the
    OpenAPI 3.1 dialect and $refs resolved inside the document.

The document is loaded once, on first use. KZ_OPENAPI=<path> checks against another file;
KZ_OPENAPI_STATS=<path> writes, at exit, how many responses were checked per operation and status
(JSON), which shows the documented answers the suite never saw.
"""

import atexit
import collections
import json
import os
import re
import threading
import urllib.parse

import jsonschema
import referencing
import referencing.jsonschema

try:  # the OpenAPI 3.1 dialect (adds discriminator/xml/example keywords to 2020-12)
    from openapi_schema_validator import OAS31Validator as _Validator
except ImportError:  # pragma: no cover - plain 2020-12 checks the same constraints
    _Validator = jsonschema.Draft202012Validator

HERE = os.path.dirname(os.path.abspath(__file__))
DOC_PATH = os.environ.get("KZ_OPENAPI") or os.path.join(HERE, "..", "..", "docs", "openapi.json")
BASE_URI = "urn:kzhook:openapi"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


class Spec:
    """One loaded OpenAPI document with its compiled path table and cached validators."""

    def __init__(self, doc):
        self.doc = doc
        resource = referencing.Resource.from_contents(
            doc, default_specification=referencing.jsonschema.DRAFT202012)
        self.registry = referencing.Registry().with_resource(BASE_URI, resource)
        self.routes = []  # (segments, template, path item)
        for template, item in doc.get("paths", {}).items():
            segs = [s for s in template.split("/") if s]
            self.routes.append((segs, template, item))
        # fixed segments beat parameters when two templates match
        self.routes.sort(key=lambda r: [s.startswith("{") for s in r[0]])
        self._validators = {}
        self._lock = threading.Lock()

    # ---- lookup
    def resolve(self, node):
        """Follow a local $ref (#/...) to the object it names."""
        seen = 0
        while isinstance(node, dict) and "$ref" in node and len(node) == 1:
            ref = node["$ref"]
            if not ref.startswith("#/"):
                raise AssertionError("openapi: only local $refs are supported, got %r" % ref)
            node = self.pointer(ref[1:])
            seen += 1
            if seen > 20:
                raise AssertionError("openapi: $ref loop at %r" % ref)
        return node

    def pointer(self, ptr):
        node = self.doc
        for part in ptr.lstrip("/").split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            node = node[part]
        return node

    def match(self, path):
        """(template, path item) for a request path, or (None, None)."""
        segs = [urllib.parse.unquote(s) for s in path.split("/") if s]
        for tsegs, template, item in self.routes:
            if len(tsegs) != len(segs):
                continue
            if all(t.startswith("{") or t.lower() == s.lower() for t, s in zip(tsegs, segs)):
                return template, item
        return None, None

    # ---- schema validation
    def validator(self, ptr):
        """A validator for the schema at JSON pointer `ptr` of the document (cached)."""
        with self._lock:
            v = self._validators.get(ptr)
            if v is None:
                v = _Validator({"$ref": BASE_URI + "#" + ptr}, registry=self.registry)
                self._validators[ptr] = v
            return v


_spec = None
_spec_lock = threading.Lock()
_seen = collections.Counter()  # "operationId status" -> responses checked


def _write_stats(path):
    with _spec_lock:
        counts = dict(sorted(_seen.items()))
    with open(path, "w") as f:
        json.dump(counts, f, indent=1)


if os.environ.get("KZ_OPENAPI_STATS"):
    atexit.register(_write_stats, os.environ["KZ_OPENAPI_STATS"])


def spec():
    """The document, loaded once."""
    global _spec
    with _spec_lock:
        if _spec is None:
            with open(DOC_PATH, "rb") as f:
                _spec = Spec(json.loads(f.read().decode("utf-8")))
        return _spec


def _ptr_escape(s):
    return s.replace("~", "~0").replace("/", "~1")


def _no_repeats(pairs):
    keys = [k for k, _ in pairs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError("repeated key(s) %s" % ", ".join(dup))
    return dict(pairs)


def _pick_status(responses, status):
    """The key of `responses` that documents `status`: exact, then range (4XX), then default."""
    for key in (str(status), "%dXX" % (status // 100), "default"):
        if key in responses:
            return key
    return None


def _media_base(ct):
    return ct.split(";", 1)[0].strip().lower()


def _check_header(sp, where, name, hdef, value):
    hdef = sp.resolve(hdef)
    schema = hdef.get("schema")
    if not schema:
        return
    types = schema.get("type")
    inst = value
    if types == "integer" or (isinstance(types, list) and "integer" in types):
        if not re.fullmatch(r"-?[0-9]+", value.strip()):
            raise AssertionError("%s: header %s: %r is not an integer" % (where, name, value))
        inst = int(value.strip())
    errs = sorted(jsonschema.Draft202012Validator(schema).iter_errors(inst), key=lambda e: e.path)
    if errs:
        raise AssertionError("%s: header %s: %r: %s" % (where, name, value, errs[0].message))


def check_response(method, path_with_query, status, headers, body_bytes):
    """AssertionError unless the response is the one docs/openapi.json documents (see module doc)."""
    op = _check(method, path_with_query, status, headers, body_bytes)
    with _spec_lock:
        _seen["%s %d" % (op, status)] += 1


def _check(method, path_with_query, status, headers, body_bytes):
    """check_response(); returns the operationId (or unknownPath/unknownMethod) it checked."""
    sp = spec()
    method_l = method.lower()
    # not urlsplit: it would take the "v1" of "//v1/webhook" for a host name
    path = path_with_query.split("?", 1)[0].split("#", 1)[0]
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    body_bytes = body_bytes or b""
    template, item = sp.match(path)
    allowed = None
    if item is None:
        op = "unknownPath"
        ptr_base = "/x-kzhook-unrouted-responses/unknownPath"
        where = "%s %s (no documented path)" % (method, path)
    elif method_l not in item:
        op = "unknownMethod"
        ptr_base = "/x-kzhook-unrouted-responses/unknownMethod"
        where = "%s %s (path %s has no %s)" % (method, path, template, method)
        allowed = {m.upper() for m in METHODS if m in item} - {"HEAD"}
    else:
        op = item[method_l].get("operationId", "?")
        ptr_base = "/paths/%s/%s/responses" % (_ptr_escape(template), method_l)
        where = "%s %s (operation %s)" % (method, template, op)
    responses = sp.pointer(ptr_base)
    key = _pick_status(responses, status)
    where_s = "%s -> %d" % (where, status)
    if key is None:
        raise AssertionError("%s: status %d is not documented (documented: %s); body %r"
                             % (where_s, status, ", ".join(sorted(responses)), body_bytes[:300]))
    resp = sp.resolve(responses[key])

    # headers
    hdefs = dict(resp.get("headers") or {})
    required = {n.lower() for n, h in hdefs.items() if sp.resolve(h).get("required")}
    if status == 429:
        required.add("retry-after")
    if status == 405:
        required.add("allow")
    for name in sorted(required):
        if name not in headers:
            raise AssertionError("%s: required header %s is missing (headers: %s)"
                                 % (where_s, name, ", ".join(sorted(headers))))
    for name, hdef in hdefs.items():
        if name.lower() in headers:
            _check_header(sp, where_s, name, hdef, headers[name.lower()])
    if status == 405 and allowed is not None:
        got = {m.strip().upper() for m in headers["allow"].split(",") if m.strip()}
        if got != allowed:
            raise AssertionError("%s: Allow %r does not list the documented methods %s"
                                 % (where_s, headers["allow"], ", ".join(sorted(allowed))))

    # body
    content = resp.get("content") or {}
    if method_l == "head":
        return op
    if not content:
        if body_bytes:
            raise AssertionError("%s: documented without a body, got %r" % (where_s, body_bytes[:300]))
        return op
    ct = headers.get("content-type", "")
    media = None
    for mt in content:
        if _media_base(mt) == _media_base(ct):
            media = mt
            break
    if media is None:
        raise AssertionError("%s: Content-Type %r is not documented (documented: %s)"
                             % (where_s, ct, ", ".join(content)))
    if _media_base(media) != "application/json":
        return op
    try:
        value = json.loads(body_bytes.decode("utf-8"), object_pairs_hook=_no_repeats)
    except (ValueError, UnicodeDecodeError) as e:
        raise AssertionError("%s: body is not valid JSON (%s): %r" % (where_s, e, body_bytes[:300]))
    if "schema" not in content[media]:
        return op
    # the schema's pointer inside the document (through a response $ref when there is one)
    rnode = responses[key]
    rptr = rnode["$ref"][1:] if isinstance(rnode, dict) and "$ref" in rnode else ptr_base + "/" + _ptr_escape(key)
    sptr = "%s/content/%s/schema" % (rptr, _ptr_escape(media))
    errs = list(sp.validator(sptr).iter_errors(value))
    if errs:
        best = jsonschema.exceptions.best_match(errs)
        at = "/".join(str(p) for p in best.absolute_path) or "(root)"
        why = best.message
        if best.context:  # oneOf/anyOf: say why each alternative failed
            why += " (%s)" % "; ".join(
                "%s: %s" % ("/".join(str(p) for p in e.absolute_path) or "(root)", e.message)
                for e in best.context[:4])
        raise AssertionError("%s: body does not match the schema at %s: at %s: %s; body %r"
                             % (where_s, sptr, at, why, body_bytes[:500]))
    return op
