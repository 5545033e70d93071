"""The one-step pipeline `retrain-trigger doctor --smoke` submits: proves that a PipelineJob can
be created under the pipeline account and write to pipeline_root. `python -m pipelines.smoke`
recompiles pipelines/smoke.yaml."""

# kfp ships no type information: its decorators are untyped for mypy.
# mypy: disable-error-code="untyped-decorator,no-any-return"

import sys
from pathlib import Path

from kfp import compiler, dsl

COMPILED_PATH = Path(__file__).with_name("smoke.yaml")
PIPELINE_NAME = "retrain-doctor-smoke"


@dsl.container_component
def hello(note: str, written: dsl.Output[dsl.Artifact]) -> dsl.ContainerSpec:
    """Writes `note` to its output, which Vertex stores under pipeline_root (no pip install,
    no network: only the image pull)."""
    return dsl.ContainerSpec(
        image="python:3.11-slim",
        command=["sh", "-c", 'mkdir -p "$(dirname "$1")" && printf %s "$0" > "$1"'],
        args=[note, written.path],
    )


@dsl.pipeline(name=PIPELINE_NAME, description="retrain-trigger doctor: one step, no data.")
def smoke_pipeline(note: str = "retrain-trigger doctor") -> None:
    """hello."""
    hello(note=note).set_caching_options(False)  # a cached step would prove nothing


def compile_pipeline(path: Path = COMPILED_PATH) -> Path:
    compiler.Compiler().compile(smoke_pipeline, str(path))
    return path


if __name__ == "__main__":
    target = compile_pipeline(Path(sys.argv[1]) if len(sys.argv) > 1 else COMPILED_PATH)
    sys.stdout.write(f"compiled {target}\n")
