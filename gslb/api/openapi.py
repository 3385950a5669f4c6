"""The OpenAPI 3.1 description of the HTTP API, served at ``GET /api/v1/openapi.json``.

OpenAPI 3.1 because its schemas are JSON Schema 2020-12, the dialect pydantic writes: the
request bodies are the API's own pydantic models (``DrainBody``, ``RegistrationBody``) and
the policy objects of ``/api/v1/services`` are the config's own models, so the document
cannot drift from what the server validates. Response schemas are written by hand from
``Node.status``, ``Node.describe_services``, ``gslb.explain.explain`` and the ``to_json``
methods of the store's records; ``tests/integration/test_openapi.py`` checks every route
against the app and fuzzes the live server against these schemas.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from pydantic import BaseModel, TypeAdapter

import gslb
from gslb.api.app import MAX_BODY, DrainBody, RegistrationBody
from gslb.config import PolicyField

JSON = "application/json"
REF = "#/components/schemas/{model}"
Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None, *, extra: bool = False,
        description: str | None = None) -> Schema:
    """An object with these keys (``required`` always present, ``optional`` maybe)."""
    out: Schema = {"type": "object", "properties": {**required, **(optional or {})}, "required": list(required),
                   "additionalProperties": extra}
    if description:
        out["description"] = description
    return out


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
NUMBER: Schema = {"type": "number"}
BOOLEAN: Schema = {"type": "boolean"}
TIMESTAMP: Schema = {"type": "number", "description": "seconds since the Unix epoch"}


def _hoist(schemas: dict[str, Schema], name: str, schema: Schema) -> None:
    """Put a pydantic JSON Schema under components/schemas: its ``$defs`` become siblings
    (their references already point there through ``ref_template``)."""
    for def_name, definition in schema.pop("$defs", {}).items():
        existing = schemas.setdefault(def_name, definition)
        if existing != definition:
            raise ValueError(f"two different schemas named {def_name!r}")
    schemas[name] = schema


def _model(schemas: dict[str, Schema], model: type[BaseModel]) -> Schema:
    _hoist(schemas, model.__name__, model.model_json_schema(ref_template=REF))
    return ref(model.__name__)


# --------------------------------------------------------------------------- response schemas


def _response_schemas() -> dict[str, Schema]:
    drain = obj({
        "kind": {"type": "string", "enum": ["endpoint", "site"]},
        "pattern": STRING,
        "reason": STRING,
        "created": TIMESTAMP,
        "expires": nullable(TIMESTAMP),
    }, description="an operator's drain: matching endpoints leave the answers")
    registration = obj({
        "service": STRING,
        "id": STRING,
        "site": STRING,
        "ipv4": nullable({"type": "string", "format": "ipv4"}),
        "ipv6": nullable({"type": "string", "format": "ipv6"}),
        "weight": {"type": "integer", "minimum": 0},
        "expires": TIMESTAMP,
        "registered": TIMESTAMP,
    }, description="an endpoint that registered itself through the API")
    event = obj({
        "at": TIMESTAMP,
        "kind": STRING,
        "target": STRING,
        "old": STRING,
        "new": STRING,
        "reason": STRING,
    }, description="a change recorded in the history: health flips, drains, registrations")
    probe_result = obj({"ok": BOOLEAN, "detail": STRING, "latency_ms": NUMBER})
    health = obj({
        "state": {"type": "string", "enum": ["up", "down"]},
        "since": TIMESTAMP,
        "flaps": {"type": "integer", "minimum": 0},
        "check": nullable(STRING),
        "last_checked": nullable(TIMESTAMP),
        "last_result": nullable(probe_result),
    }, description="what this node's health check of the endpoint says")
    endpoint = obj({
        "id": STRING,
        "site": STRING,
        "ipv4": nullable({"type": "string", "format": "ipv4"}),
        "ipv6": nullable({"type": "string", "format": "ipv6"}),
        "cname": nullable(STRING),
        "weight": {"type": "integer", "minimum": 0},
        "enabled": BOOLEAN,
        "registered": {"type": "boolean", "description": "joined through the API rather than the config"},
        "usable": {"type": "boolean", "description": "in the answers now"},
        "drained": nullable(ref("Drain")),
        "health": nullable(ref("EndpointHealth")),
    })
    service = obj({
        "name": STRING,
        "ttl": {"type": "integer", "description": "configured TTL"},
        "ttl_now": {"type": "integer", "description": "TTL answered now (shortened while a flip is under way)"},
        "answers": nullable({"type": "integer", "minimum": 1}),
        "policy": array(ref("Policy")),
        "fallback": {"type": "string", "enum": ["all", "pool", "static", "empty", "servfail"]},
        "endpoints": array(ref("Endpoint")),
    })
    health_summary = obj({
        "targets": {"type": "integer", "minimum": 0},
        "down": {"type": "integer", "minimum": 0},
        "checks": {"type": "integer", "minimum": 0},
        "failed_checks": {"type": "integer", "minimum": 0},
        "lag_p50_ms": NUMBER,
        "lag_p99_ms": NUMBER,
    })
    store = obj({
        "backend": STRING,
        "state": {"type": "string", "enum": ["ok", "degraded"]},
        "detail": STRING,
        "node": STRING,
    }, {"resyncs": {"type": "integer", "minimum": 0}}, extra=True,
        description="the state store; backends may add keys of their own")
    status = obj({
        "ready": BOOLEAN,
        "config": {"type": "string", "description": "path of the config file"},
        "generation": INTEGER,
        "serials": {"type": "object", "additionalProperties": INTEGER, "description": "zone apex -> SOA serial"},
        "reloads": {"type": "integer", "minimum": 0},
        "dns": array({"type": "string", "description": "host:port"}),
        "health": ref("HealthSummary"),
        "store": ref("StoreStatus"),
    })
    explanation = obj({
        "query": obj({"name": STRING, "type": STRING}),
        "client": STRING,
        "ecs": nullable(STRING),
        "steps": array(STRING),
        "rcode": STRING,
        "authoritative": BOOLEAN,
        "answer": array({"type": "string", "description": "a record in zone file syntax"}),
        "authority": array(STRING),
        "ttl": nullable(INTEGER),
        "depends_on": {"type": "string", "description": "what the answer varies with"},
        "ecs_scope": {"type": "integer", "minimum": 0, "maximum": 128},
    }, description="the decision trace of one resolution")
    site = obj({
        "name": STRING,
        "lat": {"type": "number", "minimum": -90, "maximum": 90},
        "lon": {"type": "number", "minimum": -180, "maximum": 180},
        "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
        "continent": {"type": "string", "enum": ["AF", "AN", "AS", "EU", "NA", "OC", "SA"]},
        "labels": {"type": "object", "additionalProperties": STRING},
    })
    traffic = obj({
        "at": TIMESTAMP,
        "answers": array(obj({"name": STRING, "site": STRING, "count": {"type": "integer", "minimum": 0}})),
    }, description="GSLB answers sent, by name and site")
    count: Schema = {"type": "integer", "minimum": 0}
    mesh_cluster = obj({
        "name": STRING,
        "site": nullable(STRING),
        "api": {**nullable(STRING), "description": "the gateway's status API (host:port), if configured"},
        "state": {"type": "string", "enum": ["reachable", "unreachable", "unknown"],
                  "description": "of the last poll; unknown: no api configured, or not polled yet"},
        "reachable": BOOLEAN,
        "error": {**nullable(STRING), "description": "why the last poll failed"},
        "age": {**nullable({"type": "number", "minimum": 0}),
                "description": "seconds since the gateway last answered"},
        "handshake_failures": count,
        "identity_failures": count,
    }, description="a cluster of the mesh and how its gateway's status API answers the node")
    mesh_link = obj({
        "from": {"type": "string", "description": "the dialing cluster"},
        "to": {"type": "string", "description": "the accepting cluster"},
        "from_site": nullable(STRING),
        "to_site": nullable(STRING),
        "state": {"type": "string", "enum": ["up", "draining", "down", "unknown"],
                  "description": "unknown: neither gateway could be read"},
        "rtt_ms": {**nullable({"type": "number", "minimum": 0}), "description": "median ping round trip"},
        "streams": count,
        "bytes_sent": {**nullable(count), "description": "by 'from' on this link"},
        "bytes_received": {**nullable(count), "description": "by 'from' on this link"},
        "reported_by": {**nullable(STRING), "description": "the gateway whose status this is"},
        "error": {**nullable(STRING), "description": "the dialer's last failure while the link is down"},
    }, description="a cluster link, as its dialer reports it (the acceptor while the dialer cannot be read)")
    mesh_route = obj({
        "cluster": {"type": "string", "description": "the importing cluster"},
        "site": nullable(STRING),
        "service": STRING,
        "sources": {**array(STRING), "description": "clusters allowed to serve it"},
        "served_by": nullable(STRING),
        "state": {"type": "string", "enum": ["routed", "no-route", "unknown"]},
    }, description="which cluster serves an imported service now")
    mesh_export = obj({
        "cluster": STRING,
        "site": nullable(STRING),
        "service": STRING,
        "to": array(STRING),
        "endpoints": count,
        "healthy": nullable(count),
        "state": {"type": "string", "enum": ["healthy", "degraded", "down", "unknown"]},
    }, description="a service a cluster exports and how many of its local endpoints are healthy")
    mesh = obj({
        "configured": {"type": "boolean", "description": "the config has a mesh section"},
        "clusters": array(ref("MeshCluster")),
        "links": array(ref("MeshLink")),
        "routes": array(ref("MeshRoute")),
        "exports": array(ref("MeshExport")),
    }, description="the cluster-link mesh as its gateways' status APIs last reported it")
    field_error = obj({"field": {"type": "string", "description": "dotted path, or <body>"}, "message": STRING})
    error = obj({"error": STRING}, {
        "fields": {**array(ref("FieldError")), "description": "the body's invalid fields (400)"},
        "errors": {**array(STRING), "description": "why the config was rejected (422)"},
    })
    return {
        "Drain": drain, "Registration": registration, "Event": event, "ProbeResult": probe_result,
        "EndpointHealth": health, "Endpoint": endpoint, "Service": service, "HealthSummary": health_summary,
        "StoreStatus": store, "Status": status, "Explanation": explanation, "Site": site, "Traffic": traffic,
        "MeshCluster": mesh_cluster, "MeshLink": mesh_link, "MeshRoute": mesh_route, "MeshExport": mesh_export,
        "Mesh": mesh, "FieldError": field_error, "Error": error,
    }


# --------------------------------------------------------------------------- operations


def json_response(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def error_response(description: str) -> Schema:
    return json_response(description, ref("Error"))


def text_response(description: str, media_type: str = "text/plain") -> Schema:
    return {"description": description, "content": {media_type: {"schema": STRING}}}


TOO_LARGE = text_response(f"the body is over {MAX_BODY} bytes (aiohttp's own plain-text reply)")
READ_AUTH = {"401": error_response("a read token is required (server.http.read_token) and missing or wrong")}
WRITE_AUTH = {
    "401": error_response("missing or wrong bearer token"),
    "403": error_response("writes are disabled: no API token is configured"),
    "503": error_response("the state store is unavailable; nothing was changed"),
}
READ_SECURITY: list[dict[str, list[str]]] = [{}, {"bearerAuth": []}]
WRITE_SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}]


def query(name: str, schema: Schema, description: str, *, required: bool = False) -> Schema:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def path_param(name: str, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1},
            "description": description}


def read_op(op_id: str, summary: str, responses: dict[str, Schema], *, tag: str = "read",
            parameters: list[Schema] | None = None) -> Schema:
    op: Schema = {"operationId": op_id, "summary": summary, "tags": [tag], "security": READ_SECURITY,
                  "responses": {**responses, **READ_AUTH}}
    if parameters:
        op["parameters"] = parameters
    return op


def write_op(op_id: str, summary: str, responses: dict[str, Schema], *, body: Schema | None = None,
             parameters: list[Schema] | None = None) -> Schema:
    op: Schema = {"operationId": op_id, "summary": summary, "tags": ["write"], "security": WRITE_SECURITY,
                  "responses": {**responses, **WRITE_AUTH}}
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
        op["responses"].setdefault("400", error_response("the body is not JSON or not valid (fields names them)"))
        op["responses"]["413"] = TOO_LARGE
    return op


def _paths(drain_body: Schema, registration_body: Schema) -> dict[str, Schema]:
    service_params = [path_param("name", "the GSLB name (case and a trailing dot do not matter)"),
                      path_param("endpoint", "the endpoint id (percent-encode a '/')")]
    return {
        "/": {"get": {
            "operationId": "getMap", "summary": "the application map (an HTML page)", "tags": ["ui"],
            "security": [{}],
            "responses": {"200": text_response("the page", "text/html")},
        }},
        "/static/{filename}": {"get": {
            "operationId": "getStatic", "summary": "the map's static files (world.path, index.html ...)",
            "tags": ["ui"], "security": [{}],
            "parameters": [path_param("filename", "a file of gslb/api/static")],
            "responses": {"200": {"description": "the file", "content": {"*/*": {"schema": {}}}},
                          "403": text_response("outside the static directory (aiohttp's plain-text reply)"),
                          "404": {"description": "no such file (aiohttp's reply: plain text, or an empty body)",
                                  "content": {"text/plain": {"schema": STRING},
                                              "application/octet-stream": {"schema": {}}}}},
        }},
        "/healthz": {"get": {
            "operationId": "getHealthz", "summary": "liveness: the process answers HTTP", "tags": ["health"],
            "security": [{}],
            "responses": {"200": json_response("alive", obj({"status": {"const": "ok"}}))},
        }},
        "/readyz": {"get": {
            "operationId": "getReadyz", "summary": "readiness, config generation, zone serials, health, store",
            "tags": ["health"], "security": [{}],
            "responses": {"200": json_response("serving DNS", ref("Status")),
                          "503": json_response("not serving DNS yet", ref("Status"))},
        }},
        "/metrics": {"get": read_op("getMetrics", "Prometheus metrics", {
            "200": text_response("Prometheus text exposition format 0.0.4"),
        }, tag="metrics")},
        "/api/v1/openapi.json": {"get": {
            "operationId": "getOpenapi", "summary": "this document", "tags": ["meta"], "security": [{}],
            "responses": {"200": json_response("the OpenAPI document", {"type": "object"})},
        }},
        "/api/v1/services": {"get": read_op("listServices", "every GSLB name with its endpoints as answered now", {
            "200": json_response("the names", obj({"services": array(ref("Service"))})),
        })},
        "/api/v1/sites": {"get": read_op("listSites", "the configured sites", {
            "200": json_response("the sites", obj({"sites": array(ref("Site"))})),
        })},
        "/api/v1/traffic": {"get": read_op("getTraffic", "answers sent so far, by name and site", {
            "200": json_response("the counters", ref("Traffic")),
        })},
        "/api/v1/mesh": {"get": read_op("getMesh", "cluster links, routes and exports, from the gateways", {
            "200": json_response("the mesh (configured false and empty lists without a mesh section)", ref("Mesh")),
        })},
        "/api/v1/events": {"get": read_op("listEvents", "the latest events, oldest first", {
            "200": json_response("the events", obj({"events": array(ref("Event"))})),
            "400": error_response("limit is not an integer"),
        }, parameters=[query("limit", {"type": "integer", "default": 100},
                             "how many of the latest events (clamped to 1..1000)")])},
        "/api/v1/events/stream": {"get": read_op("streamEvents", "events as they happen (server-sent events)", {
            "200": text_response("an endless text/event-stream: 'event: <kind>' and 'data: <Event JSON>' per "
                                 "event, a comment line every 15 s", "text/event-stream"),
        })},
        "/api/v1/drains": {
            "get": read_op("listDrains", "the drains in force", {
                "200": json_response("the drains", obj({"drains": array(ref("Drain"))})),
            }),
            "put": write_op("putDrain", "drain endpoints or sites (again: replaces the same kind and pattern)", {
                "200": json_response("the drain and the endpoints it matches now (name/endpoint-id)",
                                     obj({"drain": ref("Drain"), "matched": array(STRING)})),
            }, body=drain_body),
            "delete": write_op("deleteDrain", "lift a drain", {
                "200": json_response("lifted", obj({"removed": obj({
                    "kind": {"type": "string", "enum": ["endpoint", "site"]}, "pattern": STRING})})),
                "400": error_response("kind or pattern missing or invalid"),
                "404": error_response("no drain of that kind and pattern"),
            }, parameters=[
                query("kind", {"type": "string", "enum": ["endpoint", "site"], "default": "endpoint"},
                      "the drain's kind"),
                query("pattern", {"type": "string", "minLength": 1}, "the drain's pattern, exactly",
                      required=True),
            ]),
        },
        "/api/v1/services/{name}/endpoints/{endpoint}": {
            "put": write_op("putRegistration", "register an endpoint, or refresh it (heartbeat)", {
                "200": json_response("refreshed", obj({"registration": ref("Registration"), "new": BOOLEAN})),
                "201": json_response("registered", obj({"registration": ref("Registration"), "new": BOOLEAN})),
                "400": error_response("the body is not JSON or not valid, or the site is unknown"),
                "404": error_response("no such GSLB name"),
                "409": error_response("the id is a configured endpoint of the name"),
            }, body=registration_body, parameters=service_params),
            "delete": write_op("deleteRegistration", "deregister an endpoint", {
                "200": json_response("deregistered", obj({"removed": {"type": "string",
                                                                      "description": "name/endpoint-id"}})),
                "404": error_response("not registered"),
            }, parameters=service_params),
        },
        "/api/v1/reload": {"post": write_op("reload", "load the config file again", {
            "200": json_response("the new config serves", obj({"reloaded": {"const": True},
                                                               "generation": INTEGER})),
            "422": error_response("config rejected (errors lists why); the previous config keeps serving"),
        })},
        "/api/v1/explain": {"get": read_op("explain", "why a client gets the answer it gets", {
            "200": json_response("the decision trace", ref("Explanation")),
            "400": error_response("name or client missing, or a parameter is invalid"),
        }, parameters=[
            query("name", STRING, "the name queried", required=True),
            query("client", {"anyOf": [{"type": "string", "format": "ipv4"}, {"type": "string", "format": "ipv6"}]},
                  "the client's (or its resolver's) IP address", required=True),
            query("type", {"type": "string", "default": "A"}, "the query type (A, AAAA, ...)"),
            query("ecs", STRING, "an EDNS Client Subnet, e.g. 81.2.69.160/27"),
        ])},
    }


@cache
def _document() -> Schema:
    schemas: dict[str, Schema] = {}
    drain_body = _model(schemas, DrainBody)
    registration_body = _model(schemas, RegistrationBody)
    # the model's own validator ("give ipv4 and/or ipv6") as JSON Schema
    schemas["RegistrationBody"]["anyOf"] = [
        {"required": [key], "properties": {key: STRING}} for key in ("ipv4", "ipv6")]
    _hoist(schemas, "Policy", TypeAdapter(PolicyField).json_schema(mode="serialization", ref_template=REF))
    schemas.update(_response_schemas())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gslb node API",
            "version": gslb.__version__,
            "description": "Health, read calls and token-protected writes of one GSLB node. Writes need "
                           "`Authorization: Bearer <token>` (server.http.token or $GSLB_API_TOKEN); reads need it "
                           "too when server.http.read_token is set. Failures are JSON objects with an `error` "
                           "message, except aiohttp's own plain-text replies (unknown route, wrong method, "
                           f"body over {MAX_BODY} bytes).",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [{"name": name} for name in ("health", "read", "write", "metrics", "ui", "meta")],
        "paths": _paths(drain_body, registration_body),
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "the API token of server.http"}},
        },
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the node's HTTP API (a fresh copy each call)."""
    return copy.deepcopy(_document())
