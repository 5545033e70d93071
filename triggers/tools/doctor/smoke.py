"""`doctor --smoke`: submits pipelines/smoke.yaml (one step) as the pipeline account to one
model's pipeline_root, waits (bounded) and reports the run's state."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from triggers.tools.doctor.checks import ROOT

if TYPE_CHECKING:
    from triggers.tools.doctor.checks import Context

SMOKE_TEMPLATE = ROOT / "pipelines" / "smoke.yaml"


def check_smoke(ctx: Context, sleep: Callable[[float], None] = time.sleep,
                clock: Callable[[], float] = time.monotonic) -> None:
    from pipeline_client.launching.protocol import LaunchRequest
    from pipeline_client.launching.vertex import VertexLauncher
    from triggers.errors import RetrainError

    s = ctx.settings
    account = s.account("pipeline")
    roots = [(m.pipeline.pipeline_root, m.name) for m in
             (ctx.config.models.values() if ctx.config is not None else [])
             if m.pipeline.pipeline_root]
    root = roots[0][0] if roots else f"gs://{s.project}-retrain-pipelines/root"
    run_id = f"retrain-doctor-smoke-{uuid.uuid4().hex[:10]}"
    check = f"smoke run {run_id} as {account.split('@')[0]} to {root}"
    launcher = VertexLauncher(s.project, s.location, endpoint=s.vertex_endpoint)
    request = LaunchRequest(run_id=run_id, model="doctor", policy="smoke", trigger_id=run_id,
                            template=str(SMOKE_TEMPLATE), parameters={},
                            labels={"app": "retrain-trigger", "purpose": "doctor-smoke"},
                            service_account=account, pipeline_root=root)
    logs = (f"gcloud logging read 'resource.labels.pipeline_job_id=\"{run_id}\"' "
            f"--project={s.project} --limit=50")
    try:
        launcher.submit(request)
        deadline = clock() + s.smoke_timeout
        status = launcher.get_status(run_id)
        while status.state not in ("succeeded", "failed", "cancelled") and clock() < deadline:
            sleep(s.smoke_poll)
            status = launcher.get_status(run_id)
    except RetrainError as exc:
        ctx.report.fail("smoke", check, f"the smoke run could not be created: {exc}",
                        "fix the permissions checks above first; then: " + logs)
        return
    if status.state == "succeeded":
        ctx.report.ok("smoke", check, "SUCCEEDED")
    elif status.state in ("failed", "cancelled"):
        ctx.report.fail("smoke", check, f"the smoke run ended {status.state}: {status.message}",
                        logs)
    else:
        ctx.report.fail("smoke", check, f"the smoke run is still {status.state} after "
                        f"{s.smoke_timeout:.0f}s (--smoke-timeout)",
                        f"gcloud ai custom-jobs list --region={s.location} --project={s.project}"
                        f"\n{logs}")
