"""Checks a JSON request body against a Google API discovery document, as the real API would.

Any document bundled with google-api-python-client can be named ("aiplatform.v1"); the rules
are proto3 JSON's (https://protobuf.dev/programming-guides/json/) over the document's schemas.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import re
from pathlib import Path
from typing import Any

import googleapiclient

DOCUMENTS = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents"
_INT_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
_INTEGER_TEXT = re.compile(r"-?\d+")
_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})"
)
_DURATION = re.compile(r"-?\d+(\.\d{1,9})?s")
_FLOAT_WORDS = frozenset({"NaN", "Infinity", "-Infinity"})


@functools.cache
def load_document(name: str) -> dict[str, Any]:
    """The bundled discovery document `name` ("aiplatform.v1", "pubsub.v1", ...)."""
    path = DOCUMENTS / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no bundled discovery document {name!r} in {DOCUMENTS}")
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


def method(document: str, method_id: str) -> dict[str, Any]:
    """The method `method_id` ("aiplatform.projects.locations.pipelineJobs.create")."""
    stack = [load_document(document)]
    while stack:
        node = stack.pop()
        for found in (node.get("methods") or {}).values():
            if found.get("id") == method_id:
                return dict(found)
        stack.extend((node.get("resources") or {}).values())
    raise KeyError(f"{document} has no method {method_id}")


def request_schema(document: str, method_id: str) -> str | None:
    """The name of the schema a method's request body follows (None: it takes no body)."""
    ref = (method(document, method_id).get("request") or {}).get("$ref")
    return str(ref) if ref else None


def validate_query(document: str, method_id: str, query: dict[str, str]) -> list[str]:
    """Every query parameter the method does not take, or of the wrong type (empty: valid).

    Accepted: the method's `query` parameters and the document's standard ones (`alt`,
    `fields`, ...; also written `$alt`, as GAPIC REST clients do)."""
    doc = load_document(document)
    parameters = {
        name: spec
        for name, spec in (method(document, method_id).get("parameters") or {}).items()
        if spec.get("location") == "query"
    }
    standard = doc.get("parameters") or {}
    problems = []
    for name, value in query.items():
        spec = parameters.get(name) or standard.get(name) or standard.get(name.lstrip("$"))
        if spec is None:
            problems.append(f"{name}: unknown query parameter")
            continue
        if spec.get("type") == "integer" and not _INTEGER_TEXT.fullmatch(value):
            problems.append(f"{name}: {value!r} is not an integer")
        elif spec.get("type") == "boolean" and value not in ("true", "false"):
            problems.append(f"{name}: {value!r} is not true or false")
        elif spec.get("enum") and name.lstrip("$") != "alt" and value not in spec["enum"]:
            problems.append(f"{name}: {value!r} is not one of {', '.join(spec['enum'])}")
    return problems


def validate_body(document: str, schema: str, body: Any) -> list[str]:
    """Every way `body` breaks schema `schema` of `document`, as "path: problem" (empty: valid).

    Unknown fields (a proto field's own snake_case name is accepted, as proto3 JSON parsers
    do), wrong JSON types, enum values not in the enum (by name or number), int64 written as
    anything but a JSON integer or a decimal string, malformed timestamps, durations and bytes.
    Output-only fields are accepted (the API ignores them). `null` means "not set".
    """
    schemas = load_document(document)["schemas"]
    if schema not in schemas:
        raise KeyError(f"{document} has no schema {schema}")
    problems: list[str] = []
    _check(schemas, {"$ref": schema}, body, "", problems)
    return problems


def _check(
    schemas: dict[str, Any], spec: dict[str, Any], value: Any, path: str, problems: list[str]
) -> None:
    where = path or "(body)"
    if "$ref" in spec:
        spec = schemas[spec["$ref"]]
    if value is None:
        return
    kind = spec.get("type")
    if kind == "any":
        return
    if kind == "object":
        if not isinstance(value, dict):
            problems.append(f"{where}: expected an object, got {_json_type(value)}")
            return
        properties: dict[str, Any] = spec.get("properties") or {}
        extra = spec.get("additionalProperties")
        for key, item in value.items():
            child = f"{path}.{key}" if path else key
            if key in properties:
                _check(schemas, properties[key], item, child, problems)
            elif (camel := _camel(key)) in properties:
                _check(schemas, properties[camel], item, child, problems)
            elif extra is not None:
                if not isinstance(key, str):
                    problems.append(f"{child}: map keys must be strings")
                _check(schemas, extra, item, child, problems)
            else:
                problems.append(f"{child}: unknown field {key!r}")
        return
    if kind == "array":
        if not isinstance(value, list):
            problems.append(f"{where}: expected an array, got {_json_type(value)}")
            return
        for index, item in enumerate(value):
            _check(schemas, spec.get("items") or {}, item, f"{path}[{index}]", problems)
        return
    if kind == "boolean":
        if not isinstance(value, bool):
            problems.append(f"{where}: expected a boolean, got {_json_type(value)}")
        return
    if kind == "integer" or spec.get("format") in ("int64", "uint64"):
        _check_integer(spec.get("format") or "int32", value, where, problems)
        return
    if kind == "number":
        if isinstance(value, bool) or not (
            isinstance(value, (int, float)) or _is_number_text(value)
        ):
            problems.append(f"{where}: expected a number, got {_json_type(value)}")
        return
    if kind == "string":
        _check_string(spec, value, where, problems)
        return
    problems.append(f"{where}: the document gives no usable type ({kind!r})")


def _check_integer(fmt: str, value: Any, where: str, problems: list[str]) -> None:
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _INTEGER_TEXT.fullmatch(value):
        number = int(value)
    else:
        number = None
    if number is None:
        problems.append(f"{where}: expected an integer ({fmt}), got {_json_type(value)}")
        return
    low, high = _INT_RANGES.get(fmt, _INT_RANGES["int64"])
    if not low <= number <= high:
        problems.append(f"{where}: {number} is out of range for {fmt}")


def _check_string(spec: dict[str, Any], value: Any, where: str, problems: list[str]) -> None:
    enum = spec.get("enum")
    if enum is not None:
        # proto3 JSON parsers take an enum by name or by number (GAPIC REST clients send numbers)
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < len(enum):
                problems.append(f"{where}: {value} is not a value of the enum")
        elif not isinstance(value, str) or value not in enum:
            problems.append(f"{where}: {value!r} is not one of {', '.join(enum)}")
        return
    if not isinstance(value, str):
        problems.append(f"{where}: expected a string, got {_json_type(value)}")
        return
    fmt = spec.get("format")
    if fmt == "google-datetime" and not _TIMESTAMP.fullmatch(value):
        problems.append(f"{where}: {value!r} is not an RFC 3339 timestamp")
    elif fmt == "google-duration" and not _DURATION.fullmatch(value):
        problems.append(f"{where}: {value!r} is not a duration such as '3.5s'")
    elif fmt == "byte":
        try:
            padded = value + "=" * (-len(value) % 4)
            base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            problems.append(f"{where}: not base64")


def _is_number_text(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    if value in _FLOAT_WORDS:
        return True
    try:
        float(value)
    except ValueError:
        return False
    return True


def _camel(name: Any) -> str:
    if not isinstance(name, str) or "_" not in name:
        return ""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
