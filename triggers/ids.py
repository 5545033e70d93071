"""Deterministic ids: the same decision always yields the same trigger id and run id.

Run ids are valid Vertex AI pipeline job ids (`[a-z][a-z0-9-]{0,127}`); labels fit GCP rules.
"""

from __future__ import annotations

import hashlib
import re

RUN_ID_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,127}$")


def digest(*parts: object, length: int = 16) -> str:
    """A hex digest of the parts, unambiguous however the parts are split."""
    text = "\x1f".join(str(part) for part in parts)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def slug(text: str, limit: int) -> str:
    dashed = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return dashed[:limit].strip("-")


def trigger_id(model: str, policy: str, point_key: str) -> str:
    """The id of one decision to retrain: a model, the policy that fired, the point it fired on."""
    return digest(model, policy, point_key)


def run_id(model: str, policy: str, trigger: str) -> str:
    """The pipeline run id for a trigger: readable prefix, unique digest suffix."""
    parts = ["rt", slug(model, 48), slug(policy, 40), trigger]
    value = "-".join(part for part in parts if part)
    assert RUN_ID_PATTERN.match(value), value
    return value


def label_value(text: str) -> str:
    """A GCP label value: lower-case letters, digits, '_' and '-', at most 63 characters."""
    value = re.sub(r"[^a-z0-9_-]+", "-", text.lower())[:63]
    return value or "none"
