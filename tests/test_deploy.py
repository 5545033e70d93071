"""Deployment as code (deploy/): Terraform and the gcloud script, checked without a cloud.

- Structure of the Terraform files, read with a small HCL block reader: who gets which role,
  that nothing is public, which functions exist with which triggers and environment.
- The real `terraform` binary where one is installed: `fmt -check`, and the provider-free
  locals (locals.tf, variables.tf) evaluated for real on the real Firestore index file and a
  real compiled policy file. `init` + `validate` need the providers from the Terraform
  registry, which this machine cannot reach: that test runs only where the registry resolves.
- deploy.sh run for real against a recording stub `gcloud`, on a fresh and on an existing
  project: every command it would run is asserted (IAM, Firestore indexes from the JSON file,
  functions, environment, dead letter).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
TF_DIR = DEPLOY / "terraform"
SCRIPT = DEPLOY / "gcloud" / "deploy.sh"
DEAD_LETTER = DEPLOY / "gcloud" / "dead_letter.sh"
INDEXES = DEPLOY / "firestore.indexes.json"
TERRAFORM = shutil.which("terraform") or shutil.which("tofu")

# Environment variables the function reads (triggers/cloud/environment.py) that the deployment
# leaves unset
# on purpose: manual-trigger trusts Cloud Run IAM instead of a shared token, and the endpoint
# override exists for local fakes only.
# Unset on purpose: no shared secret (IAM + ID tokens instead), no fake endpoints, Google's
# certificates URL is the default. Set on manual-trigger only: who may call it, and its URLs.
DELIBERATELY_UNSET = {"RETRAIN_MANUAL_TOKEN", "RETRAIN_VERTEX_ENDPOINT",
                      "RETRAIN_ID_TOKEN_CERTS_URL"}
MANUAL_ONLY = {"RETRAIN_AUDIENCE", "RETRAIN_INVOKERS"}
CI_INVOKER = "serviceAccount:ci@x.iam.gserviceaccount.com"
RUNTIME_PROJECT_ROLES = {"roles/aiplatform.user", "roles/logging.logWriter", "roles/datastore.user"}
PROJECT = "test-proj"
PIPELINE_SA = f"retrain-pipeline@{PROJECT}.iam.gserviceaccount.com"
RUNTIME_SA = f"retrain-trigger@{PROJECT}.iam.gserviceaccount.com"
TRIGGER_SA = f"retrain-events@{PROJECT}.iam.gserviceaccount.com"


# ------------------------------------------------------------------------- a small HCL reader


@dataclass
class Block:
    kind: str
    labels: list[str]
    body: str


def _skip_string(text: str, i: int) -> int:
    """Index just past the string literal starting at text[i] == '"' (interpolations too)."""
    i += 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text[i] == '"':
            return i + 1
        elif text.startswith(("${", "%{"), i):
            i = _matching_brace(text, i + 1) + 1
        else:
            i += 1
    raise ValueError("unterminated string")


def _skip_comment(text: str, i: int) -> int:
    if text.startswith("/*", i):
        return text.index("*/", i) + 2
    end = text.find("\n", i)
    return len(text) if end < 0 else end


def _matching_brace(text: str, i: int) -> int:
    """Index of the '}' closing the '{' at text[i]."""
    depth = 0
    while i < len(text):
        c = text[i]
        if c == '"':
            i = _skip_string(text, i)
            continue
        if c == "#" or text.startswith(("//", "/*"), i):
            i = _skip_comment(text, i)
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError("unbalanced braces")


_HEADER = re.compile(r'[ \t]*([A-Za-z_][\w-]*)((?:[ \t]+"[^"\n]*")*)[ \t]*\{')
_ATTRIBUTE = re.compile(r"[ \t]*([A-Za-z_][\w-]*)[ \t]*=[ \t]*")


def _top_level(text: str):  # type: ignore[no-untyped-def]
    """Yields (kind, match, start, end) for each block header or attribute at depth 0."""
    i = 0
    while i < len(text):
        line_start = i == 0 or text[i - 1] == "\n"
        c = text[i]
        if line_start and (header := _HEADER.match(text, i)):
            end = _matching_brace(text, header.end() - 1)
            yield "block", header, header.end(), end
            i = end + 1
        elif line_start and (attr := _ATTRIBUTE.match(text, i)):
            j = attr.end()
            if text[j] in "{[(":
                closing = {"{": "}", "[": "]", "(": ")"}[text[j]]
                end = _matching_bracket(text, j, text[j], closing)
            else:
                end = text.find("\n", j)
                end = len(text) if end < 0 else end
            yield "attr", attr, j, end
            i = end + 1
        elif c == '"':
            i = _skip_string(text, i)
        elif c == "#" or text.startswith(("//", "/*"), i):
            i = _skip_comment(text, i)
        else:
            i += 1


def _matching_bracket(text: str, i: int, opening: str, closing: str) -> int:
    if opening == "{":
        return _matching_brace(text, i)
    depth = 0
    while i < len(text):
        c = text[i]
        if c == '"':
            i = _skip_string(text, i)
            continue
        if c in "{[(":
            depth += 1
        elif c in "}])":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError("unbalanced brackets")


def blocks(text: str, kind: str | None = None) -> list[Block]:
    found = []
    for what, match, start, end in _top_level(text):
        if what == "block" and (kind is None or match.group(1) == kind):
            labels = re.findall(r'"([^"]*)"', match.group(2))
            found.append(Block(match.group(1), labels, text[start:end]))
    return found


def attrs(text: str) -> dict[str, str]:
    """The attributes at depth 0 of a block body, as source text (one attribute a line)."""
    return {
        match.group(1): text[start : end + (1 if text[start:start + 1] in "{[(" else 0)].strip()
        for what, match, start, end in _top_level(text)
        if what == "attr"
    }


def _object(source: str) -> dict[str, str]:
    """The attributes of an HCL object literal `{ ... }` (source text)."""
    return attrs(source.strip()[1:-1])


def resources(kind: str) -> dict[str, Block]:
    return {
        block.labels[1]: block
        for path in sorted(TF_DIR.glob("*.tf"))
        for block in blocks(path.read_text(), "resource")
        if block.labels[0] == kind
    }


def all_resources() -> list[Block]:
    return [block for path in sorted(TF_DIR.glob("*.tf"))
            for block in blocks(path.read_text(), "resource")]


def locals_map(paths: list[Path] | None = None) -> dict[str, str]:
    values: dict[str, str] = {}
    for path in paths or sorted(TF_DIR.glob("*.tf")):
        for block in blocks(path.read_text(), "locals"):
            values.update(attrs(block.body))
    return values


def config_env_vars() -> set[str]:
    source = (ROOT / "triggers" / "cloud" / "environment.py").read_text()
    names = set(re.findall(r'env\.get\(\s*"([A-Z][A-Z0-9_]+)"', source))
    assert {"RETRAIN_POLICY_FILE", "RETRAIN_STATE", "RETRAIN_LAUNCHER"} <= names, names
    return names


def test_hcl_reader_reads_nested_blocks_and_strings_with_braces() -> None:
    text = textwrap.dedent('''
        resource "a" "b" {
          x = "${join(",", ["}"])}" # }
          m = {
            K = "v"
            L = "}"
          }
          inner "lbl" {
            y = 1
          }
        }
        locals { z = 2 }
    ''')
    (resource,) = blocks(text, "resource")
    assert resource.labels == ["a", "b"]
    assert set(attrs(resource.body)) == {"x", "m"}
    assert set(_object(attrs(resource.body)["m"])) == {"K", "L"}
    assert blocks(resource.body, "inner")[0].labels == ["lbl"]
    assert attrs(blocks(text, "locals")[0].body) == {"z": "2"}


# ------------------------------------------------------------------- Terraform: structure


def test_terraform_files_are_there() -> None:
    for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "locals.tf",
                 "terraform.tfvars.example"):
        assert (TF_DIR / name).is_file(), name


def test_no_member_is_public_and_no_binding_is_authoritative() -> None:
    iam = [b for b in all_resources() if re.search(r"_iam_(member|binding|policy)$", b.labels[0])]
    assert len(iam) >= 10
    for block in iam:
        # _iam_binding/_iam_policy replace every other member of the role/resource: never.
        assert block.labels[0].endswith("_iam_member"), block.labels
        member = attrs(block.body)["member"]
        assert "allUsers" not in member and "allAuthenticatedUsers" not in member, block.labels
        assert attrs(block.body)["role"] not in ('"roles/owner"', '"roles/editor"'), block.labels
    for path in [*TF_DIR.glob("*.tf"), SCRIPT]:
        for line in path.read_text().splitlines():
            if not line.lstrip().startswith("#") and re.search(r"allUsers|allAuthenticated", line):
                assert re.search(r"refused|never public", line), (path, line)  # only to refuse


def test_act_as_is_granted_on_the_pipeline_account_only() -> None:
    grants = [b for b in all_resources() if "roles/iam.serviceAccountUser" in b.body]
    assert len(grants) == 1
    (grant,) = grants
    assert grant.labels[0] == "google_service_account_iam_member"
    fields = attrs(grant.body)
    assert fields["service_account_id"] == "google_service_account.pipeline.name"
    assert fields["member"] == "google_service_account.runtime.member"


def test_runtime_roles_are_the_least_needed() -> None:
    runtime = "google_service_account.runtime.member"
    project_roles = {
        attrs(b.body)["role"].strip('"'): b
        for b in resources("google_project_iam_member").values()
        if attrs(b.body)["member"] == runtime
    }
    assert set(project_roles) == RUNTIME_PROJECT_ROLES
    (condition,) = blocks(project_roles["roles/datastore.user"].body, "condition")
    assert "databases/${var.firestore_database}" in attrs(condition.body)["expression"]
    topic_grants = [attrs(b.body) for b in resources("google_pubsub_topic_iam_member").values()
                    if attrs(b.body)["member"] == runtime]
    # the functions publish decisions, to the decisions topic only (outcomes: the pipeline)
    assert [(g["topic"], g["role"]) for g in topic_grants] == [
        ("google_pubsub_topic.decisions.name", '"roles/pubsub.publisher"')]
    # Nothing else names the runtime account except the function's identity and bucket reads.
    others = {b.labels[0] for b in all_resources() if runtime in b.body} - {
        "google_project_iam_member", "google_pubsub_topic_iam_member",
        "google_service_account_iam_member", "google_storage_bucket_iam_member"}
    assert not others
    for b in resources("google_storage_bucket_iam_member").values():
        if attrs(b.body)["member"] == runtime:
            assert attrs(b.body)["role"] == '"roles/storage.objectViewer"'


def test_dead_letter_topic_its_iam_and_a_holding_subscription() -> None:
    publisher = resources("google_pubsub_topic_iam_member")["pubsub_agent_dead_letter_publisher"]
    assert attrs(publisher.body)["topic"] == "google_pubsub_topic.dead_letter.name"
    assert attrs(publisher.body)["member"] == '"serviceAccount:${local.pubsub_agent}"'
    hold = attrs(resources("google_pubsub_subscription")["dead_letter"].body)
    assert hold["topic"] == "google_pubsub_topic.dead_letter.id"
    step = resources("terraform_data")["metrics_dead_letter"].body
    assert "dead_letter.sh" in step
    assert 'google_cloudfunctions2_function.fn["metric_event"].event_trigger[0].trigger' in step


def test_functions_entry_points_triggers_and_environment() -> None:
    functions = {key: _object(value) for key, value in _object(locals_map()["functions"]).items()}
    main_py = (ROOT / "main.py").read_text()
    expected = {"metric_event": ("on-metric-event", "on_metric_event",
                                 "google_pubsub_topic.metrics.id", "local.function_env"),
                "run_outcome": ("on-run-outcome", "on_run_outcome",
                                "google_pubsub_topic.outcomes.id", "local.function_env"),
                "evaluation_file": ("on-evaluation-file", "on_evaluation_file", "null",
                                    "local.function_env"),
                "manual": ("manual-trigger", "manual_trigger", "null",
                           "local.manual_function_env")}
    assert set(functions) == set(expected)
    for key, (name, entry_point, topic, env) in expected.items():
        assert functions[key]["name"] == f'"{name}"'
        assert functions[key]["entry_point"] == f'"{entry_point}"'
        assert re.search(rf"^def {entry_point}\(", main_py, re.M), entry_point
        assert functions[key]["topic"] == topic
        assert functions[key]["env"] == env
        assert functions[key]["ingress"] == ('"ALLOW_ALL"' if key == "manual"
                                             else '"ALLOW_INTERNAL_ONLY"')
        assert functions[key]["bucket"] == ("google_storage_bucket.evaluations.name"
                                            if key == "evaluation_file" else "null")

    (function,) = resources("google_cloudfunctions2_function").values()
    assert attrs(function.body)["for_each"] == "local.functions"
    (build,) = blocks(function.body, "build_config")
    assert attrs(build.body)["runtime"] == '"python311"'
    assert attrs(build.body)["entry_point"] == "each.value.entry_point"
    (service,) = blocks(function.body, "service_config")
    service_attrs = attrs(service.body)
    assert service_attrs["service_account_email"] == "google_service_account.runtime.email"
    assert service_attrs["available_memory"] == "var.memory"
    assert service_attrs["environment_variables"] == "each.value.env"
    assert service_attrs["ingress_settings"] == "each.value.ingress"
    (trigger,) = blocks(function.body, "dynamic")
    assert trigger.labels == ["event_trigger"]
    assert attrs(trigger.body)["for_each"] == (
        "each.value.topic == null && each.value.bucket == null ? [] : [each.value]")
    (content,) = blocks(trigger.body, "content")
    trigger_attrs = attrs(content.body)
    assert trigger_attrs["pubsub_topic"] == "event_trigger.value.topic"
    assert trigger_attrs["retry_policy"] == '"RETRY_POLICY_RETRY"'
    assert trigger_attrs["event_type"] == (
        'event_trigger.value.topic != null ? "google.cloud.pubsub.topic.v1.messagePublished" '
        ': "google.cloud.storage.object.v1.finalized"')
    assert trigger_attrs["service_account_email"] == "google_service_account.trigger.email"

    invokers = resources("google_cloud_run_v2_service_iam_member")
    assert set(invokers) == {"events_invoke", "manual_invokers"}
    manual = attrs(invokers["manual_invokers"].body)
    assert manual["member"] == "each.value"
    assert manual["for_each"] == "toset(var.manual_trigger_invokers)"
    assert manual["name"] == 'google_cloudfunctions2_function.fn["manual"].name'
    events = attrs(invokers["events_invoke"].body)
    assert events["member"] == "google_service_account.trigger.member"
    assert events["for_each"] == 'toset(["metric_event", "run_outcome", "evaluation_file"])'


def test_terraform_sets_every_variable_the_function_reads() -> None:
    values = locals_map()
    env = set(_object(values["function_env"]))
    assert config_env_vars() - DELIBERATELY_UNSET - MANUAL_ONLY <= env
    assert not env & (DELIBERATELY_UNSET | MANUAL_ONLY)
    assert re.search(r"RETRAIN_INVOKERS\s*=\s*local\.manual_invokers", values["manual_env"])
    assert re.search(r"RETRAIN_AUDIENCE\s*=\s*local\.manual_audience", values["manual_env"])
    assert "run.app" in values["manual_function_env"]
    assert "var.manual_trigger_invokers" in values["manual_invokers"]
    env_source = values["function_env"]
    assert re.search(r"RETRAIN_STATE\s*=\s*local\.state_url", env_source)
    assert values["state_url"].startswith('"firestore://${var.firestore_database}')
    assert re.search(r'RETRAIN_LAUNCHER\s*=\s*"vertex"', env_source)
    assert re.search(r'RETRAIN_TRUST_IAM\s*=\s*"true"', values["manual_env"])


def test_memory_is_at_least_256_mib() -> None:
    (memory,) = [b for b in blocks((TF_DIR / "variables.tf").read_text(), "variable")
                 if b.labels == ["memory"]]
    default = attrs(memory.body)["default"].strip('"')
    assert default.endswith("Gi") or int(default.removesuffix("Mi")) >= 256
    script_default = re.search(r'^MEMORY="\$\{MEMORY:-(\d+)Mi\}"', SCRIPT.read_text(), re.M)
    assert script_default and int(script_default.group(1)) >= 256


def test_source_zip_leaves_out_what_gcloudignore_leaves_out_and_the_deployment() -> None:
    excludes = set(re.findall(r'"([^"]+)"', locals_map()["source_excludes"]))
    patterns = [line.strip() for line in (ROOT / ".gcloudignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns
    for pattern in patterns:
        bare = pattern.rstrip("/")
        forms = {bare, f"{bare}/**", f"**/{bare}", f"**/{bare}/**"}
        assert forms & excludes, f".gcloudignore's {pattern!r} is shipped by Terraform"
    assert "deploy/**" in excludes  # state files and the zip itself


def test_firestore_index_file_is_firebase_format_and_terraform_reads_it() -> None:
    data = json.loads(INDEXES.read_text())
    assert data["indexes"], "no composite index"
    for index in data["indexes"]:
        assert index["collectionGroup"]
        assert index.get("queryScope", "COLLECTION") in ("COLLECTION", "COLLECTION_GROUP")
        assert len(index["fields"]) >= 2, index  # one field needs no composite index
        for field in index["fields"]:
            assert field["fieldPath"]
            kinds = {"order", "arrayConfig", "vectorConfig"} & set(field)
            assert len(kinds) == 1, field
            assert field.get("order", "ASCENDING") in ("ASCENDING", "DESCENDING"), field
    assert any(o.get("ttl") for o in data.get("fieldOverrides", [])), "no TTL policy"
    for override in data.get("fieldOverrides", []):
        assert override["collectionGroup"] and override["fieldPath"]
    values = locals_map()
    assert "firestore.indexes.json" in values["indexes_file"]
    assert values["firestore"] == "jsondecode(file(local.indexes_file))"
    assert "local.composite_indexes" in resources("google_firestore_index")["composite"].body
    assert "ttl_config" in resources("google_firestore_field")["overrides"].body


# ---------------------------------------------------------------- Terraform: the real binary

needs_terraform = pytest.mark.skipif(TERRAFORM is None, reason="no terraform/tofu on PATH")


def _tf(args: list[str], cwd: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    assert TERRAFORM
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1",
           "TF_CLI_CONFIG_FILE": os.devnull}
    return subprocess.run([TERRAFORM, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, **kw)  # type: ignore[call-overload, no-any-return]


@needs_terraform
def test_terraform_fmt() -> None:
    result = _tf(["fmt", "-check", "-recursive", "-diff", str(TF_DIR)], ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def _policy_source(tmp_path: Path, service_account: str = PIPELINE_SA) -> Path:
    source = tmp_path / "src"
    source.mkdir()
    (source / "policies.yaml").write_text(textwrap.dedent(f"""\
        models:
          fraud-detector:
            pipeline:
              template: gs://{PROJECT}-retrain-pipelines/templates/retrain.yaml
              service_account: {service_account}
              pipeline_root: gs://{PROJECT}-retrain-pipelines/root
            policies:
              - {{name: floor, metric: accuracy, direction: higher_is_better,
                 absolute: {{threshold: 0.95}}}}
        """))
    return source


def _compile(source: Path) -> None:
    subprocess.run([sys.executable, "-m", "triggers", "validate", "--compile",
                    str(source / "policies.yaml")], check=True, capture_output=True, cwd=ROOT)


@pytest.fixture
def locals_probe(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Evaluates locals.tf with the real terraform: no provider, nothing in the cloud."""
    probe = tmp_path / "probe"
    probe.mkdir()
    for name in ("variables.tf", "locals.tf"):
        shutil.copy(TF_DIR / name, probe / name)
    names = sorted(locals_map([TF_DIR / "locals.tf"]))
    (probe / "probe.tf").write_text(
        'output "locals" {\n  value = {\n'
        + "".join(f"    {name} = local.{name}\n" for name in names) + "  }\n}\n")
    init = _tf(["init", "-backend=false", "-input=false"], probe)
    assert init.returncode == 0, init.stdout + init.stderr

    def evaluate(*variables: str) -> subprocess.CompletedProcess[str]:
        args = ["apply", "-auto-approve", "-input=false", "-no-color", f"-var=project_id={PROJECT}",
                f"-var=firestore_indexes_file={INDEXES}"]
        return _tf([*args, *(f"-var={v}" for v in variables)], probe)

    def values(*variables: str) -> dict:  # type: ignore[type-arg]
        applied = evaluate(*variables)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        out = _tf(["output", "-json", "locals"], probe)
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    return evaluate, values


@needs_terraform
def test_terraform_locals_on_the_real_index_file_and_a_compiled_policy(
        tmp_path: Path, locals_probe) -> None:  # type: ignore[no-untyped-def]
    _, values = locals_probe
    source = _policy_source(tmp_path)
    policy = source / "policies.yaml"
    # Not compiled yet: the plan's precondition would stop.
    assert values(f"source_dir={source}")["policy_compiled_fresh"] is False
    _compile(source)
    got = values(f"source_dir={source}")
    assert got["policy_compiled_fresh"] is True
    assert got["models_off_pipeline"] == []
    assert got["pipeline_sa_email"] == PIPELINE_SA
    assert got["function_env"]["RETRAIN_STATE"] == "firestore://retrain-trigger"
    retained = values(f"source_dir={source}", "state_retention=400d")["function_env"]
    assert retained["RETRAIN_STATE"] == "firestore://retrain-trigger?retention=400d"
    assert got["function_env"]["RETRAIN_POLICY_FILE"] == "policies.yaml"
    assert got["function_env"]["GOOGLE_CLOUD_PROJECT"] == PROJECT
    assert got["manual_env"]["RETRAIN_TRUST_IAM"] == "true"
    assert got["function_env"]["RETRAIN_TRUST_IAM"] == "false"

    data = json.loads(INDEXES.read_text())
    indexes = sorted(got["composite_indexes"].values(), key=json.dumps)
    expected = sorted(({
        "collection": i["collectionGroup"], "query_scope": i.get("queryScope", "COLLECTION"),
        "fields": [{"field_path": f["fieldPath"], "order": f.get("order"),
                    "array_config": f.get("arrayConfig")} for f in i["fields"]],
    } for i in data["indexes"]), key=json.dumps)
    assert indexes == expected
    overrides = got["field_overrides"]
    assert {(o["collection"], o["field"], o["ttl"]) for o in overrides.values()} == {
        (o["collectionGroup"], o["fieldPath"], bool(o.get("ttl")))
        for o in data.get("fieldOverrides", [])}
    for o in data.get("fieldOverrides", []):
        config = overrides[f"{o['collectionGroup']}/{o['fieldPath']}"]["index_config"]
        assert config == ([] if "indexes" not in o else [[
            {"query_scope": i.get("queryScope"), "order": i.get("order"),
             "array_config": i.get("arrayConfig")} for i in o["indexes"]]])

    # An edited policy file no longer matches its compiled form.
    policy.write_text(policy.read_text() + "# edited\n")
    assert values(f"source_dir={source}")["policy_compiled_fresh"] is False


@needs_terraform
def test_terraform_names_models_that_run_as_another_account(
        tmp_path: Path, locals_probe) -> None:  # type: ignore[no-untyped-def]
    _, values = locals_probe
    source = _policy_source(tmp_path, service_account="someone@else.iam.gserviceaccount.com")
    _compile(source)
    assert values(f"source_dir={source}")["models_off_pipeline"] == ["fraud-detector"]


@needs_terraform
def test_terraform_refuses_public_invokers_and_small_memory(
        locals_probe) -> None:  # type: ignore[no-untyped-def]
    evaluate, _ = locals_probe
    public = evaluate('manual_trigger_invokers=["user:a@example.com","allUsers"]')
    assert public.returncode != 0 and "never public" in public.stderr, public.stderr
    small = evaluate("memory=128Mi")
    assert small.returncode != 0 and "at least 256Mi" in small.stderr, small.stderr
    assert evaluate("memory=1Gi").returncode == 0


def _registry_reachable() -> bool:
    try:
        socket.getaddrinfo("registry.terraform.io", 443)
    except OSError:
        return False
    return True


@needs_terraform
@pytest.mark.skipif(not _registry_reachable(),
                    reason="registry.terraform.io unreachable: providers cannot be installed")
def test_terraform_validate(tmp_path: Path) -> None:
    work = tmp_path / "tf"
    shutil.copytree(TF_DIR, work,
                    ignore=shutil.ignore_patterns(".terraform", ".build", "*.tfstate*"))
    env = {**os.environ, "TF_IN_AUTOMATION": "1"}
    for args in (["init", "-backend=false", "-input=false"], ["validate", "-no-color"]):
        result = subprocess.run([TERRAFORM or "terraform", *args], cwd=work, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------- The gcloud script


def test_scripts_parse_and_pass_shellcheck() -> None:
    for script in (SCRIPT, DEAD_LETTER):
        subprocess.run(["bash", "-n", str(script)], check=True)
        assert script.read_text().splitlines()[1:].count("set -euo pipefail") == 1
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", str(SCRIPT), str(DEAD_LETTER)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


STUB = r'''"""A recording gcloud: logs argv (and the deployed source's files) as JSON lines."""
import json, os, sys
args = sys.argv[1:]
record = {"args": args}
source = next((a.split("=", 1)[1] for a in args if a.startswith("--source=")), None)
if source:
    record["files"] = sorted(os.path.relpath(os.path.join(d, f), source)
                             for d, _, fs in os.walk(source) for f in fs)
with open(os.environ["GCLOUD_LOG"], "a") as log:
    log.write(json.dumps(record) + "\n")
exists = os.environ.get("GCLOUD_EXISTS") == "1"
# GCLOUD_FAULTS: [[argv prefix, times, stderr]]: the first `times` calls so prefixed fail.
faults = json.loads(os.environ.get("GCLOUD_FAULTS") or "[]")
counts_path = os.environ["GCLOUD_LOG"] + ".faults"
counts = json.load(open(counts_path)) if os.path.exists(counts_path) else {}
for i, (prefix, times, stderr) in enumerate(faults):
    if args[:len(prefix)] == prefix and counts.get(str(i), 0) < times:
        counts[str(i)] = counts.get(str(i), 0) + 1
        json.dump(counts, open(counts_path, "w"))
        print(stderr, file=sys.stderr)
        sys.exit(1)
if args[:2] == ["projects", "describe"]:
    print("123456789")
elif args[:2] == ["storage", "service-agent"]:
    print("service-123456789@gs-project-accounts.iam.gserviceaccount.com")
elif args[:2] == ["functions", "describe"]:
    fmt = next(a for a in args if a.startswith("--format="))
    print(f"projects/test-proj/locations/us-central1/triggers/{args[2]}-1"
          if "eventTrigger" in fmt else "https://manual-trigger-x.a.run.app")
elif args[:3] == ["eventarc", "triggers", "describe"]:
    print(f"projects/test-proj/subscriptions/eventarc-us-central1-{args[3]}-sub-1")
elif "describe" in args and not exists:
    sys.exit(1)
elif args[:4] == ["firestore", "indexes", "composite", "create"] and exists:
    print("ERROR: (gcloud) ALREADY_EXISTS: index already exists", file=sys.stderr)
    sys.exit(1)
'''


def _run_script(tmp_path: Path, source: Path, exists: bool = False,
                **env: str) -> tuple[subprocess.CompletedProcess[str], list[dict]]:  # type: ignore[type-arg]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "gcloud"
    stub.write_text(f"#!{sys.executable} -S\n{STUB}")  # -S: a quicker start, ~60 calls a run
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / f"gcloud-{exists}.jsonl"
    log.unlink(missing_ok=True)
    Path(f"{log}.faults").unlink(missing_ok=True)
    run_env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               "GCLOUD_LOG": str(log), "GCLOUD_EXISTS": "1" if exists else "0",
               "PROJECT": PROJECT, "SOURCE_DIR": str(source), "PYTHON": sys.executable,
               "RETRY_PAUSE": "0",
               "MANUAL_INVOKERS": f"user:ops@example.com {CI_INVOKER}",
               **env}
    result = subprocess.run(["bash", str(SCRIPT)], env=run_env, capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, calls


def _flag(args: list[str], name: str) -> str | None:
    return next((a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")), None)


def _env(args: list[str]) -> dict[str, str]:
    text = _flag(args, "set-env-vars") or ""
    separator = ","
    if text.startswith("^"):  # gcloud's alternate delimiter: ^;^A=1;B=2
        separator, text = text[1:].split("^", 1)
    return dict(pair.split("=", 1) for pair in text.split(separator))


@pytest.fixture
def deploy_source(tmp_path: Path) -> Path:
    source = _policy_source(tmp_path)
    (source / "main.py").write_text("# entry points\n")
    (source / "requirements.txt").write_text("functions-framework\n")
    (source / ".gcloudignore").write_text((ROOT / ".gcloudignore").read_text())
    for junk in ("deploy/terraform/terraform.tfstate", ".git/HEAD", "pkg/__pycache__/m.pyc"):
        (source / junk).parent.mkdir(parents=True, exist_ok=True)
        (source / junk).write_text("x")
    return source


def test_deploy_script_on_a_fresh_project(tmp_path: Path, deploy_source: Path) -> None:
    result, calls = _run_script(tmp_path, deploy_source)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (deploy_source / "policies.compiled.json").is_file()
    commands = [c["args"] for c in calls]
    for args in commands:
        on_project = args[:3] in (["projects", "describe", PROJECT],
                                  ["projects", "add-iam-policy-binding", PROJECT])
        assert f"--project={PROJECT}" in args or on_project, args
        assert not any("allUsers" in a or "allAuthenticatedUsers" in a for a in args), args
        assert "--allow-unauthenticated" not in args

    def named(*prefix: str) -> list[list[str]]:
        return [a for a in commands if a[:len(prefix)] == list(prefix)]

    # Fresh project: every resource is created once.
    created = {tuple(a[:4]) for a in commands if "create" in a[:4]}
    assert {("iam", "service-accounts", "create", "retrain-trigger"),
            ("iam", "service-accounts", "create", "retrain-pipeline"),
            ("iam", "service-accounts", "create", "retrain-events"),
            ("pubsub", "topics", "create", "model-metrics"),
            ("pubsub", "topics", "create", "model-metrics-dead-letter"),
            ("pubsub", "topics", "create", "retrain-outcomes"),
            ("pubsub", "subscriptions", "create", "model-metrics-dead-letter-hold")} <= created
    assert len(named("firestore", "databases", "create")) == 1

    # IAM: project-wide roles of the runtime are exactly these; act-as only on the pipeline SA.
    project_bindings = named("projects", "add-iam-policy-binding")
    runtime_roles = {_flag(a, "role") for a in project_bindings
                     if _flag(a, "member") == f"serviceAccount:{RUNTIME_SA}"}
    assert runtime_roles == RUNTIME_PROJECT_ROLES
    assert all(_flag(a, "role") != "roles/iam.serviceAccountUser" for a in project_bindings)
    (datastore,) = [a for a in project_bindings if _flag(a, "role") == "roles/datastore.user"]
    assert f'"projects/{PROJECT}/databases/retrain-trigger"' in (_flag(datastore, "condition")
                                                                   or "")
    act_as = [a for a in commands if "roles/iam.serviceAccountUser" in a
              or _flag(a, "role") == "roles/iam.serviceAccountUser"]
    assert len(act_as) == 1
    assert act_as[0][:4] == ["iam", "service-accounts", "add-iam-policy-binding", PIPELINE_SA]
    assert _flag(act_as[0], "member") == f"serviceAccount:{RUNTIME_SA}"
    runtime_topics = {a[3] for a in named("pubsub", "topics", "add-iam-policy-binding")
                      if _flag(a, "member") == f"serviceAccount:{RUNTIME_SA}"}
    assert runtime_topics == {"retrain-decisions"}  # decisions only; outcomes: the pipeline
    agent = "serviceAccount:service-123456789@gcp-sa-pubsub.iam.gserviceaccount.com"
    assert ["pubsub", "topics", "add-iam-policy-binding", "model-metrics-dead-letter"] in [
        a[:4] for a in named("pubsub", "topics", "add-iam-policy-binding")
        if _flag(a, "member") == agent and _flag(a, "role") == "roles/pubsub.publisher"]

    # Firestore: composite indexes and TTL policies exactly as in the JSON file.
    data = json.loads(INDEXES.read_text())
    indexes = sorted(
        (_flag(a, "collection-group"), _flag(a, "query-scope"),
         tuple(x.split("=", 1)[1] for x in a if x.startswith("--field-config=")))
        for a in named("firestore", "indexes", "composite", "create"))
    assert all("--database=retrain-trigger" in a
               for a in named("firestore", "indexes", "composite", "create"))
    assert indexes == sorted(
        (i["collectionGroup"], i.get("queryScope", "COLLECTION").lower().replace("_", "-"),
         tuple(f"field-path={f['fieldPath']},"
               + (f"order={f['order'].lower()}" if "order" in f
                  else f"array-config={f['arrayConfig'].lower()}") for f in i["fields"]))
        for i in data["indexes"])
    ttls = {(_flag(a, "collection-group"), a[4]) for a in named("firestore", "fields", "ttls")}
    assert ttls == {(o["collectionGroup"], o["fieldPath"])
                    for o in data.get("fieldOverrides", []) if o.get("ttl")}
    assert all("--enable-ttl" in a for a in named("firestore", "fields", "ttls"))
    exempt = {(_flag(a, "collection-group"), a[4])
              for a in named("firestore", "indexes", "fields", "update")
              if "--disable-indexes" in a}
    assert exempt == {(o["collectionGroup"], o["fieldPath"])
                      for o in data.get("fieldOverrides", []) if o.get("indexes") == []}

    # Functions.
    deploys = {a[2]: a for a in named("functions", "deploy")}
    assert set(deploys) == {"on-metric-event", "on-run-outcome", "on-evaluation-file",
                            "manual-trigger"}
    needed = config_env_vars() - DELIBERATELY_UNSET - MANUAL_ONLY
    for name, args in deploys.items():
        assert "--gen2" in args and _flag(args, "runtime") == "python311"
        assert _flag(args, "run-service-account") == RUNTIME_SA
        assert int((_flag(args, "memory") or "0").removesuffix("Mi")) >= 256
        env = _env(args)
        assert needed <= set(env) | {"RETRAIN_TRUST_IAM"}, name
        assert not set(env) & DELIBERATELY_UNSET
        assert name == "manual-trigger" or not set(env) & MANUAL_ONLY
        assert env["RETRAIN_STATE"] == "firestore://retrain-trigger"
        assert env["RETRAIN_LAUNCHER"] == "vertex"
        assert env["GOOGLE_CLOUD_PROJECT"] == PROJECT
        assert env["RETRAIN_POLICY_FILE"] == "policies.yaml"
        assert env["RETRAIN_DECISIONS_TOPIC"] == f"projects/{PROJECT}/topics/retrain-decisions"
    assert _flag(deploys["on-metric-event"], "entry-point") == "on_metric_event"
    assert _flag(deploys["on-metric-event"], "trigger-topic") == "model-metrics"
    assert _flag(deploys["on-run-outcome"], "entry-point") == "on_run_outcome"
    assert _flag(deploys["on-run-outcome"], "trigger-topic") == "retrain-outcomes"
    for name in ("on-metric-event", "on-run-outcome", "on-evaluation-file"):
        assert "--retry" in deploys[name]
        assert _flag(deploys[name], "trigger-service-account") == TRIGGER_SA
        assert _env(deploys[name]).get("RETRAIN_TRUST_IAM") != "true"
    manual = deploys["manual-trigger"]
    assert _flag(manual, "entry-point") == "manual_trigger"
    assert "--trigger-http" in manual and "--no-allow-unauthenticated" in manual
    assert _env(manual)["RETRAIN_TRUST_IAM"] == "true"
    # The function checks callers' ID tokens again: the invokers, and its own two URLs.
    assert _env(manual)["RETRAIN_INVOKERS"] == f"user:ops@example.com,{CI_INVOKER}"
    assert _env(manual)["RETRAIN_AUDIENCE"].split(",") == [
        f"https://us-central1-{PROJECT}.cloudfunctions.net/manual-trigger",
        "https://manual-trigger-123456789.us-central1.run.app"]
    # What ships: the code, the policy file and its compiled form; not the deployment, VCS
    # or caches (gcloud applies .gcloudignore, also shipped, on top).
    files = next(c["files"] for c in calls if c["args"][:3] == ["functions", "deploy",
                                                                "on-metric-event"])
    assert {"main.py", "requirements.txt", "policies.yaml", "policies.compiled.json"} <= set(files)
    assert not [f for f in files if f.startswith(("deploy/", ".git/")) or "__pycache__" in f]

    invokers = {(a[2], _flag(a, "member"))
                for a in named("functions", "add-invoker-policy-binding")}
    assert invokers == {("on-metric-event", f"serviceAccount:{TRIGGER_SA}"),
                        ("on-run-outcome", f"serviceAccount:{TRIGGER_SA}"),
                        ("on-evaluation-file", f"serviceAccount:{TRIGGER_SA}"),
                        ("manual-trigger", "user:ops@example.com"),
                        ("manual-trigger", "serviceAccount:ci@x.iam.gserviceaccount.com")}

    # Dead letter on the subscription Eventarc made for on-metric-event.
    subscription = "projects/test-proj/subscriptions/eventarc-us-central1-on-metric-event-1-sub-1"
    updates = {a[3]: a for a in named("pubsub", "subscriptions", "update")}
    update = updates[subscription]
    dead_letter_topic = f"projects/{PROJECT}/topics/model-metrics-dead-letter"
    assert _flag(update, "dead-letter-topic") == dead_letter_topic
    assert _flag(update, "max-delivery-attempts") == "10"
    assert (subscription, agent, "roles/pubsub.subscriber") in {
        (a[3], _flag(a, "member"), _flag(a, "role"))
        for a in named("pubsub", "subscriptions", "add-iam-policy-binding")}
    # The functions exist before their subscription is looked up.
    order = [tuple(a[:3]) for a in commands]
    assert order.index(("eventarc", "triggers", "describe")) > max(
        i for i, a in enumerate(order) if a[:2] == ("functions", "deploy"))


FLAG_HEAVY = (("functions", "deploy"), ("firestore", "indexes"), ("firestore", "fields"),
              ("firestore", "databases", "create"), ("pubsub", "subscriptions"),
              ("projects", "add-iam-policy-binding"), ("storage", "buckets", "create"),
              ("eventarc", "triggers"))


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="no gcloud CLI")
def test_deploy_script_flags_parse_with_the_real_gcloud(tmp_path: Path,
                                                        deploy_source: Path) -> None:
    """The real gcloud parses each command's flags before it looks for credentials: with no
    account configured, a well-formed command stops at 'no active account', a bad flag at a
    usage error (exit 2). One command of each shape with many flags."""
    _, calls = _run_script(tmp_path, deploy_source)
    shapes: dict[tuple[str, ...], list[str]] = {}
    for call in calls:
        args = call["args"]
        if args[:2] == ["functions", "deploy"] or any(
                tuple(args[:len(p)]) == p for p in FLAG_HEAVY):
            shape = tuple(a.split("=", 1)[0] for a in args if a.startswith("--"))
            shapes.setdefault((*args[:3], *shape), [
                f"--source={tmp_path}" if a.startswith("--source=") else a for a in args])
    assert len(shapes) >= 10
    env = {**os.environ, "CLOUDSDK_CONFIG": str(tmp_path / "gcloud-config"),
           "CLOUDSDK_CORE_DISABLE_PROMPTS": "1", "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false"}

    def parse(args: list[str]) -> tuple[list[str], subprocess.CompletedProcess[str]]:
        return args, subprocess.run(["gcloud", *args], env=env, capture_output=True, text=True,
                                    timeout=120)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for args, result in pool.map(parse, shapes.values()):
            assert result.returncode != 2 and "active account" in result.stderr, (
                args, result.stderr[-600:])


def test_deploy_script_again_creates_nothing(tmp_path: Path, deploy_source: Path) -> None:
    result, calls = _run_script(tmp_path, deploy_source, exists=True)
    assert result.returncode == 0, result.stdout + result.stderr
    creates = [c["args"] for c in calls if "create" in c["args"][:4]]
    # Composite indexes have no describe-by-definition: creating answers ALREADY_EXISTS, which
    # the script accepts.
    assert creates and all(a[:3] == ["firestore", "indexes", "composite"] for a in creates)
    assert len([c for c in calls if c["args"][:2] == ["functions", "deploy"]]) == 4


def test_deploy_script_refuses_a_pipeline_run_as_another_account(tmp_path: Path) -> None:
    source = _policy_source(tmp_path, service_account="someone@else.iam.gserviceaccount.com")
    result, calls = _run_script(tmp_path, source)
    assert result.returncode != 0
    assert "fraud-detector" in result.stderr and PIPELINE_SA in result.stderr
    assert calls == []  # nothing was touched


@pytest.mark.parametrize("env", [{"MANUAL_INVOKERS": "user:a@example.com allUsers"},
                                 {"MEMORY": "128Mi"}])
def test_deploy_script_refuses_public_access_and_small_memory(
        tmp_path: Path, deploy_source: Path, env: dict[str, str]) -> None:
    result, calls = _run_script(tmp_path, deploy_source, **env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert calls == []


# ------------------------------------------------------- a fresh project: first run succeeds
PROPAGATION = ("ERROR: (gcloud.functions.deploy) INVALID_ARGUMENT: Validation failed for trigger "
               "projects/test-proj/locations/us-central1/triggers/on-metric-event-1: Invalid "
               'resource state for "": Permission denied while using the Eventarc Service Agent. '
               "If you recently started to use Eventarc, it may take a few minutes before all "
               "necessary permissions are propagated to the Service Agent. Otherwise, verify "
               "that it has Eventarc Service Agent role.")
CONTENTION = ("ERROR: (gcloud.firestore.indexes.composite.create) ABORTED: Aborted due to "
              "cross-transaction contention. This occurs when multiple transactions attempt to "
              "access the same data, requiring Firestore to abort at least one (HTTP 409)")


def _faults(*faults: tuple[list[str], int, str]) -> str:
    return json.dumps([list(f) for f in faults])


def _count(calls: list[dict], *prefix: str) -> int:  # type: ignore[type-arg]
    return sum(1 for c in calls if c["args"][:len(prefix)] == list(prefix))


def test_deploy_script_waits_out_service_agent_iam_propagation(
        tmp_path: Path, deploy_source: Path) -> None:
    """A fresh project: the first trigger creations meet the Eventarc service agent's roles
    still propagating; the script retries those (bounded) and succeeds."""
    faults = _faults((["functions", "deploy", "on-metric-event"], 2, PROPAGATION),
                     (["functions", "deploy", "on-run-outcome"], 1, PROPAGATION))
    result, calls = _run_script(tmp_path, deploy_source, GCLOUD_FAULTS=faults)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _count(calls, "functions", "deploy", "on-metric-event") == 3
    assert _count(calls, "functions", "deploy", "on-run-outcome") == 2
    assert "not ready yet" in result.stderr


def test_deploy_script_gives_up_on_other_errors_and_after_its_bound(
        tmp_path: Path, deploy_source: Path) -> None:
    denied = "ERROR: (gcloud.functions.deploy) PERMISSION_DENIED: caller lacks run.services.create"
    result, calls = _run_script(tmp_path, deploy_source, GCLOUD_FAULTS=_faults(
        (["functions", "deploy", "on-metric-event"], 1, denied)))
    assert result.returncode != 0 and "PERMISSION_DENIED" in result.stderr
    assert _count(calls, "functions", "deploy", "on-metric-event") == 1  # not retried
    result, calls = _run_script(tmp_path, deploy_source, PROPAGATION_ATTEMPTS="3",
                                GCLOUD_FAULTS=_faults(
                                    (["functions", "deploy", "on-metric-event"], 9, PROPAGATION)))
    assert result.returncode != 0
    assert _count(calls, "functions", "deploy", "on-metric-event") == 3


def test_deploy_script_retries_firestore_operations_that_conflict(
        tmp_path: Path, deploy_source: Path) -> None:
    """Index, field and TTL operations racing on a new database answer 409/ABORTED: each is
    retried; TTL operations are waited for (no --async), so they do not race each other."""
    busy_field = ("ERROR: (gcloud.firestore.indexes.fields.update) HTTPError 409: Please retry, "
                  "underlying data changed")
    faults = _faults((["firestore", "indexes", "composite", "create"], 1, CONTENTION),
                     (["firestore", "indexes", "fields", "update"], 1, busy_field),
                     (["firestore", "fields", "ttls", "update"], 1, busy_field))
    clean, clean_calls = _run_script(tmp_path, deploy_source)
    assert clean.returncode == 0
    result, calls = _run_script(tmp_path, deploy_source, GCLOUD_FAULTS=faults)
    assert result.returncode == 0, result.stdout + result.stderr
    for prefix in (("firestore", "indexes", "composite", "create"),
                   ("firestore", "indexes", "fields", "update"),
                   ("firestore", "fields", "ttls", "update")):
        assert _count(calls, *prefix) == _count(clean_calls, *prefix) + 1, prefix
    assert not [c for c in calls if c["args"][:3] == ["firestore", "fields", "ttls"]
                and "--async" in c["args"]]


def test_deploy_script_dead_letters_outcomes_too(tmp_path: Path, deploy_source: Path) -> None:
    result, calls = _run_script(tmp_path, deploy_source)
    assert result.returncode == 0, result.stdout + result.stderr
    commands = [c["args"] for c in calls]
    created = {tuple(a[:4]) for a in commands if "create" in a[:4]}
    assert {("pubsub", "topics", "create", "retrain-outcomes-dead-letter"),
            ("pubsub", "subscriptions", "create", "retrain-outcomes-dead-letter-hold")} <= created
    (hold,) = [a for a in commands if a[:4] == ["pubsub", "subscriptions", "create",
                                                "retrain-outcomes-dead-letter-hold"]]
    assert _flag(hold, "topic") == "retrain-outcomes-dead-letter"
    agent = "serviceAccount:service-123456789@gcp-sa-pubsub.iam.gserviceaccount.com"
    assert ("retrain-outcomes-dead-letter", agent, "roles/pubsub.publisher") in {
        (a[3], _flag(a, "member"), _flag(a, "role")) for a in commands
        if a[:3] == ["pubsub", "topics", "add-iam-policy-binding"]}
    subscription = "projects/test-proj/subscriptions/eventarc-us-central1-on-run-outcome-1-sub-1"
    updates = {a[3]: a for a in commands if a[:3] == ["pubsub", "subscriptions", "update"]}
    assert _flag(updates[subscription], "dead-letter-topic") == (
        f"projects/{PROJECT}/topics/retrain-outcomes-dead-letter")
    assert (subscription, agent, "roles/pubsub.subscriber") in {
        (a[3], _flag(a, "member"), _flag(a, "role")) for a in commands
        if a[:3] == ["pubsub", "subscriptions", "add-iam-policy-binding"]}
    named = _run_script(tmp_path, deploy_source, OUTCOME_DEAD_LETTER_TOPIC="outcomes-dlq")[1]
    assert "--dead-letter-topic=projects/test-proj/topics/outcomes-dlq" in [
        x for c in named if c["args"][:3] == ["pubsub", "subscriptions", "update"]
        for x in c["args"]]


def test_deploy_script_pipeline_account_cannot_write_templates(
        tmp_path: Path, deploy_source: Path) -> None:
    result, calls = _run_script(tmp_path, deploy_source)
    assert result.returncode == 0, result.stdout + result.stderr
    commands = [c["args"] for c in calls]
    templates, pipelines = f"gs://{PROJECT}-retrain-templates", f"gs://{PROJECT}-retrain-pipelines"
    assert ["storage", "buckets", "create", templates] in [a[:4] for a in commands]
    grants = {(a[3], _flag(a, "member"), _flag(a, "role")) for a in commands
              if a[:3] == ["storage", "buckets", "add-iam-policy-binding"]}
    assert grants == {(templates, f"serviceAccount:{RUNTIME_SA}", "roles/storage.objectViewer"),
                      (f"gs://{PROJECT}-retrain-evaluations", f"serviceAccount:{RUNTIME_SA}",
                       "roles/storage.objectViewer"),
                      (pipelines, f"serviceAccount:{PIPELINE_SA}", "roles/storage.objectUser")}
    project_roles = {_flag(a, "role") for a in commands
                     if a[:2] == ["projects", "add-iam-policy-binding"]
                     and _flag(a, "member") == f"serviceAccount:{PIPELINE_SA}"}
    assert not {r for r in project_roles if r and r.startswith("roles/storage.")}


@pytest.mark.parametrize("member", ["allUsers", "ALLUSERS", "allauthenticatedusers",
                                    "domain:example.com", "Domain:example.com"])
def test_deploy_script_refuses_wide_invokers(tmp_path: Path, deploy_source: Path,
                                             member: str) -> None:
    result, calls = _run_script(tmp_path, deploy_source,
                                MANUAL_INVOKERS=f"user:a@example.com {member}")
    assert result.returncode == 2, result.stdout + result.stderr
    assert member in result.stderr and "MANUAL_INVOKERS" in result.stderr
    assert calls == []


@pytest.mark.parametrize("member", ["group:oncall@example.com", "Group:oncall@example.com"])
def test_deploy_script_refuses_group_invokers_the_function_cannot_check(
        tmp_path: Path, deploy_source: Path, member: str) -> None:
    result, calls = _run_script(tmp_path, deploy_source,
                                MANUAL_INVOKERS=f"user:a@example.com {member}")
    assert result.returncode == 2, result.stdout + result.stderr
    assert member in result.stderr and "groups" in result.stderr
    assert calls == []


@needs_terraform
def test_terraform_refuses_group_invokers_the_function_cannot_check(
        locals_probe) -> None:  # type: ignore[no-untyped-def]
    evaluate, values = locals_probe
    refused = evaluate('manual_trigger_invokers=["user:a@example.com","group:x@example.com"]')
    assert refused.returncode != 0 and "group:" in refused.stderr, refused.stderr


# --------------------------------------------------- Terraform: fresh project, least privilege
def test_terraform_waits_for_service_agents_before_the_triggers() -> None:
    versions = (TF_DIR / "versions.tf").read_text()
    assert re.search(r'time\s*=\s*\{\s*source\s*=\s*"hashicorp/time"', versions)
    (wait,) = resources("time_sleep").values()
    assert attrs(wait.body)["create_duration"] == "var.service_agent_wait"
    depends = attrs(wait.body)["depends_on"]
    for grant in ("google_project_service.apis",
                  "google_service_account_iam_member.pubsub_mints_trigger_tokens",
                  "google_pubsub_topic_iam_member.pubsub_agent_dead_letter_publisher",
                  "google_pubsub_topic_iam_member.pubsub_agent_outcome_dead_letter_publisher"):
        assert grant in depends, grant
    (function,) = resources("google_cloudfunctions2_function").values()
    assert "time_sleep.service_agents" in attrs(function.body)["depends_on"]


def test_terraform_sequences_firestore_index_and_field_operations() -> None:
    indexes = resources("google_firestore_index")
    assert set(indexes) == {"first", "composite"}
    assert "local.first_index_key" in attrs(indexes["first"].body)["for_each"]
    assert "local.first_index_key" in attrs(indexes["composite"].body)["for_each"]
    assert attrs(indexes["composite"].body)["depends_on"] == "[google_firestore_index.first]"
    field_depends = attrs(resources("google_firestore_field")["overrides"].body)["depends_on"]
    assert "google_firestore_index.first" in field_depends
    assert "google_firestore_index.composite" in field_depends


def test_terraform_dead_letters_outcomes_too() -> None:
    variables = {b.labels[0]: attrs(b.body)
                 for b in blocks((TF_DIR / "variables.tf").read_text(), "variable")}
    assert variables["outcome_dead_letter_topic"]["default"] == '"retrain-outcomes-dead-letter"'
    topic = attrs(resources("google_pubsub_topic")["outcome_dead_letter"].body)
    assert topic["name"] == "var.outcome_dead_letter_topic"
    hold = attrs(resources("google_pubsub_subscription")["outcome_dead_letter"].body)
    assert hold["topic"] == "google_pubsub_topic.outcome_dead_letter.id"
    assert hold["name"] == '"${var.outcome_dead_letter_topic}-hold"'
    publisher = attrs(resources("google_pubsub_topic_iam_member")[
        "pubsub_agent_outcome_dead_letter_publisher"].body)
    assert publisher["topic"] == "google_pubsub_topic.outcome_dead_letter.name"
    assert publisher["member"] == '"serviceAccount:${local.pubsub_agent}"'
    assert publisher["role"] == '"roles/pubsub.publisher"'
    step = resources("terraform_data")["outcome_dead_letter"].body
    assert "dead_letter.sh" in step
    (exec_,) = blocks(step, "provisioner")
    env = _object(attrs(exec_.body)["environment"])
    assert env["TRIGGER"] == (
        'google_cloudfunctions2_function.fn["run_outcome"].event_trigger[0].trigger')
    assert env["DEAD_LETTER_TOPIC"] == "google_pubsub_topic.outcome_dead_letter.id"


def test_terraform_pipeline_account_cannot_write_templates() -> None:
    buckets = resources("google_storage_bucket")
    assert attrs(buckets["templates"].body)["name"] == "local.template_bucket"
    assert '"${var.project_id}-retrain-templates"' in locals_map()["template_bucket"]
    pipeline = "google_service_account.pipeline.member"
    runtime = "google_service_account.runtime.member"
    grants = [attrs(b.body) for b in resources("google_storage_bucket_iam_member").values()]
    assert [(g["bucket"], g["role"]) for g in grants if g["member"] == pipeline] == [
        ("google_storage_bucket.pipelines.name", '"roles/storage.objectUser"')]
    (reads,) = [g for g in grants if g["member"] == runtime and "for_each" in g]
    assert reads["role"] == '"roles/storage.objectViewer"'
    assert "google_storage_bucket.templates.name" in reads["for_each"]
    assert "pipelines" not in reads["for_each"]
    assert not [b for b in resources("google_project_iam_member").values()
                if attrs(b.body)["member"] == pipeline and "storage" in attrs(b.body)["role"]]
    outputs = {b.labels[0]: attrs(b.body)
               for b in blocks((TF_DIR / "outputs.tf").read_text(), "output")}
    assert "google_storage_bucket.templates.name" in outputs["template_prefix"]["value"]


@needs_terraform
@pytest.mark.parametrize("member", ["allUsers", "AllUsers", "allAuthenticatedUsers",
                                    "domain:example.com", "DOMAIN:example.com"])
def test_terraform_refuses_wide_invokers(locals_probe, member: str) -> None:  # type: ignore[no-untyped-def]
    evaluate, _ = locals_probe
    refused = evaluate(f'manual_trigger_invokers=["user:a@example.com","{member}"]')
    assert refused.returncode != 0 and "never public" in refused.stderr, refused.stderr
    assert evaluate('manual_trigger_invokers=["serviceAccount:ci@p.iam.gserviceaccount.com"]'
                    ).returncode == 0


def test_both_paths_enable_every_api_doctor_requires() -> None:
    """doctor fails a project without these APIs, so deploy/ must enable each of them."""
    from triggers.tools.doctor.checks import REQUIRED_APIS

    required = {f"{api}.googleapis.com" for api in REQUIRED_APIS}
    tf = set(re.findall(r'"([a-z]+\.googleapis\.com)"', (TF_DIR / "main.tf").read_text()))
    script = SCRIPT.read_text()
    enable = script[script.index("gcloud services enable"):]
    enable = enable[: enable.index('"${G[@]}"')]
    sh = set(re.findall(r"([a-z]+\.googleapis\.com)", enable))
    assert required - tf == set(), "terraform does not enable these"
    assert required - sh == set(), "deploy.sh does not enable these"


# ------------------------------------- issue 15: evaluation files in a bucket, decisions topic
STORAGE_AGENT = "serviceAccount:service-123456789@gs-project-accounts.iam.gserviceaccount.com"


def test_terraform_evaluation_bucket_triggers_on_evaluation_file() -> None:
    variables = {b.labels[0]: attrs(b.body)
                 for b in blocks((TF_DIR / "variables.tf").read_text(), "variable")}
    assert variables["evaluation_bucket"]["default"].startswith("null")
    assert '"${var.project_id}-retrain-evaluations"' in locals_map()["evaluation_bucket"]
    bucket = attrs(resources("google_storage_bucket")["evaluations"].body)
    assert bucket["name"] == "local.evaluation_bucket"
    assert bucket["location"] == "var.region"  # an Eventarc storage trigger's region
    assert bucket["public_access_prevention"] == '"enforced"'
    (function,) = resources("google_cloudfunctions2_function").values()
    (trigger,) = blocks(function.body, "dynamic")
    (content,) = blocks(trigger.body, "content")
    (filters,) = blocks(content.body, "dynamic")
    assert filters.labels == ["event_filters"]
    assert attrs(filters.body)["for_each"] == (
        "event_trigger.value.bucket == null ? [] : [event_trigger.value.bucket]")
    (filter_,) = blocks(filters.body, "content")
    assert attrs(filter_.body) == {"attribute": '"bucket"', "value": "event_filters.value"}
    # The runtime reads objects of that bucket only; Storage's agent publishes notifications;
    # the trigger's identity receives Eventarc events.
    reads = attrs(resources("google_storage_bucket_iam_member")["runtime_reads_evaluations"].body)
    assert (reads["bucket"], reads["role"], reads["member"]) == (
        "google_storage_bucket.evaluations.name", '"roles/storage.objectViewer"',
        "google_service_account.runtime.member")
    project = {attrs(b.body)["member"]: attrs(b.body)["role"]
               for b in resources("google_project_iam_member").values()}
    assert project['"serviceAccount:${data.google_storage_project_service_account.'
                   'storage_agent.email_address}"'] == '"roles/pubsub.publisher"'
    assert project["google_service_account.trigger.member"] == '"roles/eventarc.eventReceiver"'
    wait = attrs(resources("time_sleep")["service_agents"].body)["depends_on"]
    assert "google_project_iam_member.storage_agent_publishes_events" in wait
    # Its subscription dead-letters like the other two.
    step = resources("terraform_data")["evaluation_dead_letter"].body
    (exec_,) = blocks(step, "provisioner")
    env = _object(attrs(exec_.body)["environment"])
    assert env["TRIGGER"] == (
        'google_cloudfunctions2_function.fn["evaluation_file"].event_trigger[0].trigger')
    assert env["DEAD_LETTER_TOPIC"] == "google_pubsub_topic.evaluation_dead_letter.id"
    hold = attrs(resources("google_pubsub_subscription")["evaluation_dead_letter"].body)
    assert hold["topic"] == "google_pubsub_topic.evaluation_dead_letter.id"
    publisher = attrs(resources("google_pubsub_topic_iam_member")[
        "pubsub_agent_evaluation_dead_letter_publisher"].body)
    assert publisher["member"] == '"serviceAccount:${local.pubsub_agent}"'


def test_terraform_decisions_topic_and_its_only_publisher() -> None:
    variables = {b.labels[0]: attrs(b.body)
                 for b in blocks((TF_DIR / "variables.tf").read_text(), "variable")}
    assert variables["decisions_topic"]["default"] == '"retrain-decisions"'
    topic = attrs(resources("google_pubsub_topic")["decisions"].body)
    assert topic["name"] == "var.decisions_topic"
    publishers = [attrs(b.body) for b in resources("google_pubsub_topic_iam_member").values()
                  if attrs(b.body)["topic"] == "google_pubsub_topic.decisions.name"]
    assert [(p["member"], p["role"]) for p in publishers] == [
        ("google_service_account.runtime.member", '"roles/pubsub.publisher"')]
    env = _object(locals_map()["function_env"])
    assert env["RETRAIN_DECISIONS_TOPIC"] == (
        '"projects/${var.project_id}/topics/${var.decisions_topic}"')
    outputs = {b.labels[0]: attrs(b.body)
               for b in blocks((TF_DIR / "outputs.tf").read_text(), "output")}
    assert outputs["decisions_topic"]["value"] == "google_pubsub_topic.decisions.id"
    assert "google_storage_bucket.evaluations.name" in outputs["evaluation_prefix"]["value"]


@needs_terraform
def test_terraform_locals_name_the_evaluation_bucket_and_decisions_topic(
        locals_probe) -> None:  # type: ignore[no-untyped-def]
    _, values = locals_probe
    got = values()
    assert got["evaluation_bucket"] == f"{PROJECT}-retrain-evaluations"
    assert got["function_env"]["RETRAIN_DECISIONS_TOPIC"] == (
        f"projects/{PROJECT}/topics/retrain-decisions")
    assert got["manual_env"]["RETRAIN_DECISIONS_TOPIC"] == (
        f"projects/{PROJECT}/topics/retrain-decisions")
    named = values("evaluation_bucket=evals-x", "decisions_topic=told")
    assert named["evaluation_bucket"] == "evals-x"
    assert named["function_env"]["RETRAIN_DECISIONS_TOPIC"] == f"projects/{PROJECT}/topics/told"


def test_deploy_script_evaluation_bucket_trigger_and_decisions_topic(
        tmp_path: Path, deploy_source: Path) -> None:
    result, calls = _run_script(tmp_path, deploy_source)
    assert result.returncode == 0, result.stdout + result.stderr
    commands = [c["args"] for c in calls]
    evaluations = f"gs://{PROJECT}-retrain-evaluations"
    created = {tuple(a[:4]) for a in commands if "create" in a[:4]}
    assert {("storage", "buckets", "create", evaluations),
            ("pubsub", "topics", "create", "retrain-decisions"),
            ("pubsub", "topics", "create", "retrain-evaluations-dead-letter"),
            ("pubsub", "subscriptions", "create",
             "retrain-evaluations-dead-letter-hold")} <= created
    (deploy,) = [a for a in commands if a[:3] == ["functions", "deploy", "on-evaluation-file"]]
    assert _flag(deploy, "entry-point") == "on_evaluation_file"
    filters = [a.split("=", 1)[1] for a in deploy if a.startswith("--trigger-event-filters=")]
    assert sorted(filters) == [f"bucket={PROJECT}-retrain-evaluations",
                               "type=google.cloud.storage.object.v1.finalized"]
    assert _flag(deploy, "trigger-location") == "us-central1"
    assert "--retry" in deploy and _flag(deploy, "trigger-topic") is None
    assert _flag(deploy, "trigger-service-account") == TRIGGER_SA
    assert _flag(deploy, "ingress-settings") == "internal-only"
    # IAM: the runtime reads that bucket and publishes to that topic, nothing wider.
    bucket_grants = {(a[3], _flag(a, "member"), _flag(a, "role")) for a in commands
                     if a[:3] == ["storage", "buckets", "add-iam-policy-binding"]}
    assert (evaluations, f"serviceAccount:{RUNTIME_SA}",
            "roles/storage.objectViewer") in bucket_grants
    topic_grants = {(a[3], _flag(a, "member"), _flag(a, "role")) for a in commands
                    if a[:3] == ["pubsub", "topics", "add-iam-policy-binding"]}
    assert [t for t in topic_grants if t[1] == f"serviceAccount:{RUNTIME_SA}"] == [
        ("retrain-decisions", f"serviceAccount:{RUNTIME_SA}", "roles/pubsub.publisher")]
    project_grants = {(_flag(a, "member"), _flag(a, "role")) for a in commands
                      if a[:2] == ["projects", "add-iam-policy-binding"]}
    assert (STORAGE_AGENT, "roles/pubsub.publisher") in project_grants
    assert (f"serviceAccount:{TRIGGER_SA}", "roles/eventarc.eventReceiver") in project_grants
    # The storage agent's grant comes before the trigger that needs it.
    order = [tuple(a[:3]) for a in commands]
    grant_at = next(i for i, a in enumerate(commands) if _flag(a, "member") == STORAGE_AGENT)
    assert grant_at < order.index(("functions", "deploy", "on-evaluation-file"))
    # Its Eventarc subscription dead-letters to its own topic.
    subscription = ("projects/test-proj/subscriptions/"
                    "eventarc-us-central1-on-evaluation-file-1-sub-1")
    updates = {a[3]: a for a in commands if a[:3] == ["pubsub", "subscriptions", "update"]}
    assert _flag(updates[subscription], "dead-letter-topic") == (
        f"projects/{PROJECT}/topics/retrain-evaluations-dead-letter")
    named = _run_script(tmp_path, deploy_source, EVALUATION_BUCKET="evals-x",
                        DECISIONS_TOPIC="told")[1]
    (renamed,) = [c["args"] for c in named
                  if c["args"][:3] == ["functions", "deploy", "on-evaluation-file"]]
    assert "--trigger-event-filters=bucket=evals-x" in renamed
    assert _env(renamed)["RETRAIN_DECISIONS_TOPIC"] == f"projects/{PROJECT}/topics/told"
