"""The policy file and environment: errors name the field or variable; `validate` and the
shipped JSON Schema agree with the models; the import path stays light."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_TEMPLATE, POLICY_YAML, ROOT
from triggers.cloud.environment import Environment
from triggers.errors import ConfigError, PolicyConfigError
from triggers.policy_file import parse_policy_file, schema_json


def good_yaml() -> str:
    return POLICY_YAML % {"template": EXAMPLE_TEMPLATE}


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("direction: lower_is_better", "direction: down", "models.churn.policies.0.direction"),
        ("absolute: {threshold: 0.30}", "absolute: {threshold: .inf}",
         "models.churn.policies.0.absolute.threshold"),
        ("breaches_to_trigger: 3", "breaches_to_trigger: 6",
         "models.fraud-detector.policies.0"),
        ("cooldown: 72h", "cooldown: 3 days", "models.fraud-detector.guards.cooldown"),
        ("parameters: {training_days: 30}", "parameters: {model: other}",
         "models.fraud-detector.pipeline.parameters"),
        ("min_examples: 500", "min_examples: 500, colour: red",
         "models.fraud-detector.policies.0.colour"),
        ("absolute: {threshold: 0.30}", "absolute: {threshold: 0.30}, trend: {lookback: 7d, "
         "max_decline_per_day: 0.01}", "models.churn.policies.0"),
    ],
    ids=["direction", "inf", "m-greater-than-n", "duration", "reserved-parameter",
         "unknown-key", "two-rules"],
)
def test_policy_errors_name_the_field(old: str, new: str, field: str) -> None:
    text = good_yaml()
    assert old in text
    with pytest.raises(PolicyConfigError) as info:
        parse_policy_file(text.replace(old, new))
    assert info.value.field == field


def test_environment_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="RETRAIN_POLICY_FILE: is not set"):
        Environment.from_env({})
    with pytest.raises(ConfigError) as info:
        Environment.from_env({"RETRAIN_POLICY_FILE": "p.yaml", "RETRAIN_STATE": "postgres://x"})
    assert info.value.variable == "RETRAIN_STATE"
    with pytest.raises(ConfigError) as info:
        Environment.from_env({"RETRAIN_POLICY_FILE": "p.yaml", "RETRAIN_LAUNCHER": "vertex"})
    assert info.value.variable == "GOOGLE_CLOUD_PROJECT"
    env = Environment.from_env({"RETRAIN_POLICY_FILE": "p.yaml"})
    assert (env.state, env.launcher, env.trust_iam) == ("sqlite:///.retrain/state.db", "local",
                                                        False)


def fresh_python(code: str, policy: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run `code` in a new interpreter configured with `policy`, as a cold start would."""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "RETRAIN_POLICY_FILE": str(policy),
             "RETRAIN_STATE": f"sqlite:///{tmp_path}/s.db", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    return result


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "triggers", *args], cwd=ROOT,
                          capture_output=True, text=True)


def test_validate_command(tmp_path: Path) -> None:
    ok = run_cli("validate", "examples/policies.yaml")
    assert ok.returncode == 0 and "OK" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(good_yaml().replace("direction: lower_is_better", "direction: down")
                   .replace("cooldown: 72h", "cooldown: soon"))
    result = run_cli("validate", str(bad))
    assert result.returncode == 1
    assert "2 error(s)" in result.stderr
    assert "models.churn.policies.0.direction" in result.stderr
    assert "models.fraud-detector.guards.cooldown" in result.stderr
    missing = tmp_path / "missing-template.yaml"
    missing.write_text(POLICY_YAML % {"template": "nowhere.yaml"})
    result = run_cli("validate", str(missing))
    assert result.returncode == 1 and "pipeline.template" in result.stderr


def test_shipped_schema_is_current_and_checks_the_example() -> None:
    shipped = (ROOT / "policy.schema.json").read_text()
    assert shipped == schema_json(), "run: python -m triggers schema > policy.schema.json"
    schema = json.loads(shipped)
    policy = schema["$defs"]["PolicySpec"]
    assert policy["required"] == ["name", "metric", "direction"]
    assert set(policy["properties"]["direction"]["enum"]) == {"higher_is_better",
                                                             "lower_is_better"}


def test_importing_main_loads_no_heavy_package(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(good_yaml())
    code = (
        "import sys, main; heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('scipy', 'kfp', 'numpy', 'pandas', 'grpc', 'requests') or "
        "m.startswith(('google.cloud.aiplatform', 'google.cloud.pubsub', "
        "'google.cloud.firestore', 'google.api_core'))]; print(heavy)"
    )
    result = fresh_python(code, policy, tmp_path)
    assert result.stdout.strip() == "[]"


def test_compiled_policy_file_is_used_only_while_current(tmp_path: Path) -> None:
    from triggers.config import ServiceConfig, compile_policy_file, compiled_path, load_policy_file

    policy = tmp_path / "policies.yaml"
    policy.write_text(good_yaml())
    fresh = load_policy_file(policy)
    target = compile_policy_file(policy)
    assert target == compiled_path(policy) == tmp_path / "policies.compiled.json"
    cached = load_policy_file(policy)

    def view(config: ServiceConfig) -> dict[str, object]:
        return {name: (m.pipeline, m.guards, m.lateness, m.promotion,
                       [p.spec for p in m.policies]) for name, m in config.models.items()}

    assert view(cached) == view(fresh)
    # an edited source no longer matches its digest: it is validated again, errors and all
    policy.write_text(good_yaml().replace("direction: lower_is_better", "direction: down"))
    with pytest.raises(PolicyConfigError) as info:
        load_policy_file(policy)
    assert info.value.field == "models.churn.policies.0.direction"
    assert isinstance(fresh, ServiceConfig)


def test_cold_start_with_a_compiled_policy_needs_neither_pydantic_nor_yaml(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "policies.yaml"
    policy.write_text(good_yaml())
    assert run_cli("validate", str(policy), "--compile").returncode == 0
    event = json.dumps({"model": "churn", "metrics": {"logloss": 0.1},
                        "window_end": "2026-11-02T00:00:00Z"})
    code = (
        "import sys, main; from triggers.cloud import wiring; "
        "from triggers.events import delivery_from_https; "
        f"r = wiring.service().handle_delivery(delivery_from_https({event!r}.encode()));"
        "print(r.status, sorted({m.split('.')[0] for m in sys.modules} & "
        "{'pydantic', 'yaml', 'scipy', 'numpy', 'kfp'}))"
    )
    result = fresh_python(code, policy, tmp_path)
    assert result.stdout.strip() == "recorded []"


def test_validate_checks_a_local_template_declares_what_the_service_passes(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "policies.yaml"
    text = POLICY_YAML % {"template": ROOT / "pipelines" / "retrain.yaml"}
    text = text.replace("parameters: {training_days: 30}",
                        "parameters: {training_days: 30, data_uri: /data, registry: /reg}")
    text += """    promotion:  # of the last model, churn
      primary: {metric: accuracy}
"""
    policy.write_text(text)
    assert run_cli("validate", str(policy)).returncode == 0
    # The toy example template declares neither the data parameters nor `promotion`.
    policy.write_text(text.replace(str(ROOT / "pipelines" / "retrain.yaml"),
                                   str(EXAMPLE_TEMPLATE)))
    bad = run_cli("validate", str(policy))
    assert bad.returncode == 1
    assert ("models.churn.pipeline: the template does not declare input 'promotion'"
            in bad.stderr)
    assert "does not declare input 'data_uri'" in bad.stderr


def test_store_and_vertex_timeouts_come_from_the_environment(tmp_path: Path) -> None:
    """`sqlite:///path?timeout=2s` bounds a write's wait for a lock; RETRAIN_VERTEX_TIMEOUT
    bounds each Vertex call. Bad values name the variable."""
    from triggers.state.sqlite import SQLiteStore

    assert SQLiteStore.from_url(f"sqlite:///{tmp_path}/a.db?timeout=2s").busy_timeout == 2.0
    assert SQLiteStore.from_url(f"sqlite:///{tmp_path}/b.db").busy_timeout == 10.0
    for bad in ("?timeout=0s", "?timeout=soon", "?wait=2s"):
        with pytest.raises(ConfigError) as caught:
            SQLiteStore.from_url(f"sqlite:///{tmp_path}/c.db{bad}")
        assert caught.value.variable == "RETRAIN_STATE"
    env = {"RETRAIN_POLICY_FILE": "p.yaml"}
    assert Environment.from_env(env).vertex_timeout == 30.0
    assert Environment.from_env({**env, "RETRAIN_VERTEX_TIMEOUT": "2s"}).vertex_timeout == 2.0
    with pytest.raises(ConfigError) as caught:
        Environment.from_env({**env, "RETRAIN_VERTEX_TIMEOUT": "fast"})
    assert caught.value.variable == "RETRAIN_VERTEX_TIMEOUT"
