"""Request rules of Google REST APIs read from their published discovery documents (those
bundled with google-api-python-client): which method a request is, and what is wrong with it
(unknown or missing query parameters, path values off their pattern, unknown or mistyped body
fields). Used by the wire-level fakes in tests/fakes/google_apis.py."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tests.fakes.discovery import load_document, validate_body


@dataclass(frozen=True)
class Method:
    id: str
    http_method: str
    matcher: re.Pattern[str]  # on the URL path (servicePath + flatPath, or path)
    values: re.Pattern[str]  # on the URL path, capturing the method's path parameters
    spec: dict[str, Any]


class DiscoveryRules:
    """The methods of one discovery document, matched and checked against raw requests."""

    def __init__(self, document: str) -> None:
        self.name = document.removesuffix(".json")
        self.doc: dict[str, Any] = load_document(self.name)
        prefix = "/" + self.doc.get("servicePath", "")
        methods: list[Method] = []
        for spec in _walk(self.doc):
            flat = spec.get("flatPath") or spec["path"]
            methods.append(Method(spec["id"], spec["httpMethod"],
                                  re.compile(_regex(prefix + flat, named=False)),
                                  re.compile(_regex(prefix + spec["path"], named=True)), spec))
        # the most literal template first: `.../topics/{t}:testIamPermissions` before `{t}`
        self.methods = sorted(methods, key=lambda m: -len(re.sub(r"\{[^}]+\}", "",
                                                                m.spec.get("flatPath")
                                                                or m.spec["path"])))

    def match(self, http_method: str, path: str) -> Method | None:
        for method in self.methods:
            if method.http_method == http_method and method.matcher.fullmatch(path):
                return method
        return None

    def problems(self, method: Method, path: str, query: dict[str, list[str]],
                 body: Any) -> list[str]:
        """What the request breaks of the method's published definition ([] when nothing)."""
        found: list[str] = []
        params = method.spec.get("parameters") or {}
        values = method.values.fullmatch(path)
        for name, spec in params.items():
            if spec["location"] == "path":
                value = values.group(name) if values else None
                pattern = spec.get("pattern")
                if value is None or (pattern and not re.search(pattern, value)):
                    found.append(f"path parameter {name}={value!r} does not match {pattern}")
            elif spec.get("required") and name not in query:
                found.append(f"query parameter {name} is required")
        for name, given in query.items():
            spec = params.get(name) or self.doc.get("parameters", {}).get(name)
            if spec is None or spec.get("location") == "path":
                found.append(f"unknown query parameter {name}")
                continue
            if len(given) > 1 and not spec.get("repeated"):
                found.append(f"query parameter {name} is not repeated")
            for value in given:
                found += _scalar(spec, value, f"query parameter {name}")
        request = method.spec.get("request")
        if request is None:
            if body not in (None, "", {}):
                found.append("this method takes no request body")
        else:  # the one body validator of the fakes (proto3 JSON rules)
            found += validate_body(self.name, request["$ref"], body)
        return found


def _walk(resource: dict[str, Any]) -> list[dict[str, Any]]:
    found = list((resource.get("methods") or {}).values())
    for child in (resource.get("resources") or {}).values():
        found += _walk(child)
    return found


def _regex(template: str, named: bool) -> str:
    out, pos = "", 0
    for m in re.finditer(r"\{(\+?)([^}]+)\}", template):
        out += re.escape(template[pos:m.start()])
        body = ".+" if m.group(1) else "[^/]+"
        name = re.sub(r"\W", "_", m.group(2))
        out += f"(?P<{name}>{body})" if named else f"(?:{body})"
        pos = m.end()
    return out + re.escape(template[pos:])


def _scalar(spec: dict[str, Any], value: str, where: str) -> list[str]:
    if spec.get("type") == "integer" and not re.fullmatch(r"-?\d+", value):
        return [f"{where}={value!r} is not an integer"]
    if spec.get("type") == "boolean" and value not in ("true", "false"):
        return [f"{where}={value!r} is not a boolean"]
    if "enum" in spec and value not in spec["enum"]:
        return [f"{where}={value!r} is not one of {spec['enum']}"]
    return []
