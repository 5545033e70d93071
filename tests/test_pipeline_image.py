"""The pipeline image: Vertex AI cannot run steps compiled on the placeholder base image.

Compiling with RETRAIN_PIPELINE_IMAGE must put every executor (nested ones too) on that image,
and a Vertex cold start must refuse a template whose steps still name the placeholder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline_client.launching.templates import PLACEHOLDER_IMAGE, placeholder_images
from tests.conftest import TEST_PIPELINE_IMAGE, vertex_ready_template
from triggers.cloud import wiring
from triggers.cloud.environment import Environment
from triggers.errors import PolicyConfigError

ROOT = Path(__file__).resolve().parents[1]
RETRAIN = ROOT / "pipelines" / "retrain.yaml"
# Steps that run only inside the dsl.If / dsl.Else branches (components of nested DAGs).
NESTED_EXECUTORS = {"exec-promote-model", "exec-report-outcome", "exec-report-outcome-2"}
POLICY = """
models:
  fraud-detector:
    pipeline: {{template: {template}, pipeline_root: gs://acme-ml-pipelines/root}}
    policies:
      - {{name: accuracy-floor, metric: accuracy, direction: higher_is_better,
         absolute: {{threshold: 0.9}}}}
"""

pytestmark = pytest.mark.usefixtures("fresh_template_cache")


def spec(path: Path) -> dict[str, object]:
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def test_placeholder_images_names_the_executors_left_on_the_placeholder(tmp_path: Path) -> None:
    executors = spec(RETRAIN)["deploymentSpec"]["executors"]  # type: ignore[index]
    assert placeholder_images(spec(RETRAIN)) == sorted(executors)  # as shipped, for kfp.local
    assert NESTED_EXECUTORS <= set(executors)
    assert placeholder_images(spec(vertex_ready_template(tmp_path, RETRAIN))) == []
    one_left = spec(vertex_ready_template(tmp_path, RETRAIN))
    one_left["deploymentSpec"]["executors"]["exec-report-outcome-2"]["container"][  # type: ignore[index]
        "image"] = PLACEHOLDER_IMAGE
    assert placeholder_images(one_left) == ["exec-report-outcome-2"]


def test_compiling_with_the_image_variable_leaves_no_step_on_the_placeholder(
    tmp_path: Path,
) -> None:
    target = tmp_path / "retrain.yaml"
    env = {**os.environ, "RETRAIN_PIPELINE_IMAGE": TEST_PIPELINE_IMAGE, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "pipelines.retrain", str(target)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr

    compiled = spec(target)
    assert placeholder_images(compiled) == []
    executors = compiled["deploymentSpec"]["executors"]  # type: ignore[index]
    assert NESTED_EXECUTORS <= set(executors)
    assert {e["container"]["image"] for e in executors.values()} == {TEST_PIPELINE_IMAGE}
    # the same pipeline otherwise: only the images differ from the shipped compile
    shipped = RETRAIN.read_text(encoding="utf-8").replace(PLACEHOLDER_IMAGE, TEST_PIPELINE_IMAGE)
    assert compiled == yaml.safe_load(shipped)


def vertex_env(tmp_path: Path, template: Path, launcher: str = "vertex") -> Environment:
    policy = tmp_path / "policies.yaml"
    policy.write_text(POLICY.format(template=template), encoding="utf-8")
    return Environment.from_env({
        "RETRAIN_POLICY_FILE": str(policy), "RETRAIN_STATE": f"sqlite:///{tmp_path}/state.db",
        "RETRAIN_LAUNCHER": launcher, "GOOGLE_CLOUD_PROJECT": "acme-ml",
        "RETRAIN_VERTEX_ENDPOINT": "http://127.0.0.1:9",
    })


def test_a_vertex_cold_start_refuses_a_placeholder_template(tmp_path: Path) -> None:
    with pytest.raises(PolicyConfigError) as caught:
        wiring.build_service(vertex_env(tmp_path, RETRAIN))

    error = caught.value
    assert error.field == "models.fraud-detector.pipeline.template"
    assert error.value == str(RETRAIN)
    assert "RETRAIN_PIPELINE_IMAGE=<image> python -m pipelines.retrain" in str(error)
    assert PLACEHOLDER_IMAGE in str(error) and "exec-promote-model" in str(error)


def test_a_vertex_cold_start_takes_a_template_compiled_with_an_image(tmp_path: Path) -> None:
    service = wiring.build_service(vertex_env(tmp_path, vertex_ready_template(tmp_path, RETRAIN)))
    assert service.launcher.name == "vertex"


def test_the_local_launcher_runs_the_placeholder_template(tmp_path: Path) -> None:
    service = wiring.build_service(vertex_env(tmp_path, RETRAIN, launcher="local"))
    assert service.launcher.name == "local"
