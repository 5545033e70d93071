"""`retrain-trigger demo`: the whole loop for real on one machine, no cloud account — a
drifting synthetic stream, continuous evaluation, policies, kfp.local runs, gate, promotion.

Every simulated day the champion (read from the local model registry) is scored on that day's
freshly labelled examples, which also land in a local data lake, and its metrics are posted
to a local `serve`. When a policy fires the local launcher runs pipelines/retrain.yaml; the
simulation waits for the run to end (retraining "overnight"), so the timeline is repeatable.
Ends with a timeline, `timeline.json` and a PNG plot in the work directory.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from triggers.tools.quickstart import (
    ROOT,
    call,
    free_port,
    fresh_workdir,
    start_server,
    stop_server,
    wait_healthy,
)

MODEL = "demo-classifier"
TEMPLATE = ROOT / "pipelines" / "retrain.yaml"
FLOOR = 0.86
HISTORY_DAYS = 7
RUN_DEADLINE = 300.0

POLICY_TEMPLATE = """\
# Written by `retrain-trigger demo`. Schema: policy.schema.json
defaults:
  guards: {{cooldown: 0s, max_runs: {{count: 20, per: 1d}}, skip_if_running: true,
           run_timeout: 10m}}
models:
  {model}:
    pipeline:
      template: {template}
      parameters: {{data_uri: {data}, registry: {registry}, training_days: 7,
                   holdout_days: 1, seed: 0, outcome_topic: {outcome_url}}}
    policies:
      - {{name: accuracy-floor, metric: accuracy, direction: higher_is_better,
         absolute: {{threshold: {floor}}}, breaches_to_trigger: 2, evaluation_points: 3,
         min_examples: 200}}
      - {{name: accuracy-trend, metric: accuracy, direction: higher_is_better,
         trend: {{lookback: 10d, min_points: 7, max_decline_per_day: 0.002,
                 confidence: 0.95}}}}
    promotion:
      primary: {{metric: accuracy, min_improvement: 0.0, confidence: 0.95}}
      guardrails: [{{metric: auc, max_regression: 0.01}}]
      floors: {{accuracy: 0.75}}
"""


@dataclass
class Day:
    """One simulated day of the timeline."""

    day: int
    date: str
    version: str
    accuracy: float
    auc: float
    fired: list[str] = field(default_factory=list)
    suppressed: list[str] = field(default_factory=list)
    run_id: str | None = None
    outcome: str | None = None
    new_version: str | None = None
    summary: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class DemoSettings:
    """How long and how big the simulated stream is."""

    days: int = 48
    examples_per_day: int = 2000
    seed: int = 7
    keep_serving: bool = False
    """After the timeline, print the page's URL and serve it until interrupted."""


class Demo:
    """One demo run in `workdir` against a local server it starts and stops."""

    def __init__(self, workdir: Path, settings: DemoSettings, out: TextIO = sys.stdout) -> None:
        from pipelines.drift import DriftingConcept

        self.workdir = workdir.resolve()  # the server runs there: paths must not be relative
        self.settings = settings
        self.out = out
        self.concept = DriftingConcept(seed=settings.seed,
                                       examples_per_day=settings.examples_per_day)
        self.data = self.workdir / "data"
        self.registry_root = self.workdir / "registry"
        self.token = secrets.token_urlsafe(16)
        self.base = ""
        self.timeline: list[Day] = []
        self.runs: list[dict[str, Any]] = []

    # -------------------------------------------------------------- the loop
    def run(self) -> int:
        try:
            fresh_workdir(self.workdir, "demo")
        except FileExistsError as exc:
            self.say(f"demo: {exc}")
            return 2
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        policies = self._write_policies()
        self.say(f"retrain-trigger demo: {self.settings.days} simulated days, "
                 f"{self.settings.examples_per_day} labelled examples a day, concept drifts "
                 f"from day {self.concept.drift_start} to {self.concept.drift_end}")
        self.say(f"  work dir {self.workdir}, server {self.base}, policies {policies.name}")
        server = start_server(self.workdir, self.token, port, policies)
        started = time.monotonic()
        try:
            wait_healthy(self.base, server)
            for day in range(-HISTORY_DAYS, 0):
                self._land(day)
            self.say(f"\n{HISTORY_DAYS} days of labelled history in the data lake; no model "
                     "yet → manual trigger for the first one (only the floors apply)")
            status, answer = call(self.base, self.token, "POST", "/retrain",
                                  {"model": MODEL, "reason": "demo: first model", "force": True})
            if status != 202:
                self.say(f"manual trigger refused ({status}): {answer}")
                return 1
            first = self._wait_run(answer["run_id"], server)
            if first.get("decision") != "promoted":
                self.say(f"the first run did not promote a model: {first}")
                return 1
            self.say("\nday  date        champion  accuracy  auc     decision")
            for day in range(self.settings.days):
                if not self._simulate_day(day, server):
                    return 1
            self._finish(time.monotonic() - started)
            if self.settings.keep_serving:
                self._keep_serving(server)
            return 0
        finally:
            stop_server(server)

    def _simulate_day(self, day: int, server: subprocess.Popen[bytes]) -> bool:
        sample = self._land(day)
        champion = self._champion()
        if champion is None:
            self.say("the registry has no champion")
            return False
        version, model = champion
        accuracy, auc = score(model, sample.x, sample.y)
        event = {
            "model": MODEL, "model_version": version,
            "metrics": {"accuracy": round(accuracy, 5), "auc": round(auc, 5)},
            "window_start": f"{sample.day}T00:00:00Z",
            "window_end": f"{self.concept.date_of(day + 1).isoformat()}T00:00:00Z",
            "examples": int(len(sample.y)),
        }
        status, answer = call(self.base, self.token, "POST", "/events", event)
        if status != 200 or answer.get("status") != "recorded":
            self.say(f"event refused ({status}): {answer}")
            return False
        entry = Day(day, sample.day, version, accuracy, auc)
        entry.fired = sorted({d["policy"] for d in answer["decisions"] if d["kind"] == "fired"})
        entry.suppressed = sorted({d["policy"] for d in answer["decisions"]
                                   if d["kind"] == "suppressed"})
        self.timeline.append(entry)
        verdict = ("FIRED " + ", ".join(entry.fired) if entry.fired
                   else "held back " + ", ".join(entry.suppressed) if entry.suppressed
                   else "need more points" if all(d["kind"] == "insufficient_data"
                                                  for d in answer["decisions"]
                                                  if d["policy"] == "accuracy-floor")
                   else "ok")
        self.say(f"{day:>3}  {sample.day}  v{version:<8} {accuracy:.3f}     {auc:.3f}   "
                 f"{verdict}")
        for run_id in answer["launched"]:
            self.say(f"       └ pipeline {run_id} runs (kfp.local): prepare ▸ train ▸ "
                     "evaluate both ▸ gate …")
            outcome = self._wait_run(run_id, server)
            entry.run_id, entry.outcome = run_id, outcome.get("decision")
            entry.new_version = outcome.get("champion_version")
            entry.summary = outcome.get("summary", "")
        return True

    # -------------------------------------------------------------- helpers
    def _write_policies(self) -> Path:
        path = self.workdir / "policies.yaml"
        path.write_text(POLICY_TEMPLATE.format(
            model=MODEL, template=json.dumps(str(TEMPLATE)), data=json.dumps(str(self.data)),
            registry=json.dumps(f"file://{self.registry_root}"),
            outcome_url=json.dumps(f"{self.base}/pubsub/outcomes"), floor=FLOOR,
        ), encoding="utf-8")
        return path

    def _land(self, day: int) -> Any:
        """The day's examples get their labels and land in the data lake."""
        from pipelines.datalake import write_day

        sample = self.concept.sample(day)
        write_day(self.data, MODEL, sample)
        return sample

    def _champion(self) -> tuple[str, Any] | None:
        from pipeline_client.promotion.registries import LocalModelRegistry
        from pipelines.logistic import LogisticModel

        current = LocalModelRegistry(self.registry_root).champion(MODEL)
        if current is None:
            return None
        return current.version, LogisticModel.load(current.artifact_uri)

    def _wait_run(self, run_id: str, server: subprocess.Popen[bytes]) -> dict[str, Any]:
        """Waits for the run to end; its outcome decision, new champion and gate summary."""
        started = time.monotonic()
        while time.monotonic() - started < RUN_DEADLINE and server.poll() is None:
            _, trail = call(self.base, self.token, "GET", f"/decisions?model={MODEL}&limit=20")
            for d in trail["decisions"]:
                if d.get("run_id") == run_id and d["kind"] in (
                        "promoted", "rejected_challenger", "failed", "timed_out"):
                    details = d.get("details") or {}
                    report = details.get("report") or {}
                    outcome = {"decision": {"rejected_challenger": "rejected"}.get(
                                   d["kind"], d["kind"]),
                               "champion_version": details.get("champion_version"),
                               "summary": report.get("summary") or report.get("error") or "",
                               "seconds": round(time.monotonic() - started, 1)}
                    self.runs.append({"run_id": run_id, **outcome})
                    mark = {"promoted": "PROMOTED", "rejected": "rejected"}.get(
                        outcome["decision"], outcome["decision"])
                    new = (f" → champion v{outcome['champion_version']}"
                           if outcome["decision"] == "promoted" else "")
                    self.say(f"       └ {mark}{new} in {outcome['seconds']} s: "
                             f"{outcome['summary'][:150]}")
                    return outcome
            time.sleep(0.3)
        self.say(f"       └ run {run_id} did not end in {RUN_DEADLINE:.0f} s; see "
                 f"{self.workdir / 'runs'}")
        return {"decision": "unfinished"}

    def _finish(self, seconds: float) -> None:
        self.say(f"\ntimeline ({seconds:.0f} s):")
        for entry in self.timeline:
            if entry.run_id:
                what = (f"promoted v{entry.new_version}" if entry.outcome == "promoted"
                        else str(entry.outcome))
                self.say(f"  {entry.date}  {', '.join(entry.fired)} fired at accuracy "
                         f"{entry.accuracy:.3f} (champion v{entry.version}) → {what}")
        self.say(f"  runs: {len(self.runs)} (first model included), promoted "
                 f"{sum(r['decision'] == 'promoted' for r in self.runs)}, rejected "
                 f"{sum(r['decision'] == 'rejected' for r in self.runs)}")
        (self.workdir / "timeline.json").write_text(json.dumps(
            {"days": [d.to_json() for d in self.timeline], "runs": self.runs, "floor": FLOOR,
             "seconds": round(seconds, 1)}, indent=1), encoding="utf-8")
        plot = plot_timeline(self.timeline, FLOOR, self.workdir / "demo.png")
        self.say(f"  plot {plot}; timeline {self.workdir / 'timeline.json'}; audit trail: "
                 f"python -m triggers decisions --state sqlite:///{self.workdir / 'state.db'}")

    def _keep_serving(self, server: subprocess.Popen[bytes]) -> None:
        """The page's URL (it logs the browser in with the token once), served until Ctrl-C."""
        self.say(f"\nthe page: {self.base}/?token={self.token}  (model: {self.base}/models/"
                 f"{MODEL}); serving until interrupted (Ctrl-C)")
        try:
            while server.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            self.say("stopped")

    def say(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()


def score(model: Any, x: Any, y: Any) -> tuple[float, float]:
    """Accuracy and ROC AUC of `model` on labelled examples."""
    import numpy as np
    from scipy.stats import rankdata

    probability = model.predict_proba(x)
    accuracy = float(np.mean((probability > 0.5) == (y == 1)))
    positives = int(np.sum(y == 1))
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return accuracy, float("nan")
    ranks = rankdata(probability)
    auc = (float(np.sum(ranks[y == 1])) - positives * (positives + 1) / 2) / (
        positives * negatives)
    return accuracy, auc


def plot_timeline(timeline: list[Day], floor: float, path: Path) -> Path:
    """Accuracy per day coloured by champion, the floor, triggers, promotions, rejections."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(11, 4.5))
    versions = sorted({d.version for d in timeline}, key=_version_key)
    colours: Callable[[int], Any] = plt.get_cmap("tab10")
    for index, version in enumerate(versions):
        days = [d for d in timeline if d.version == version]
        axis.plot([d.day for d in days], [d.accuracy for d in days], marker="o", markersize=3,
                  color=colours(index), label=f"champion v{version}")
    axis.axhline(floor, color="grey", linestyle="--", linewidth=1,
                 label=f"accuracy-floor {floor}")
    for d in timeline:
        if d.fired:
            axis.axvline(d.day, color="orange", alpha=0.35, linewidth=6)
            axis.annotate(", ".join(d.fired), (d.day, d.accuracy), textcoords="offset points",
                          xytext=(4, -14), fontsize=7, color="darkorange")
        if d.outcome == "promoted":
            axis.scatter([d.day + 0.5], [d.accuracy], marker="^", s=90, color="green",
                         zorder=5)
        elif d.outcome == "rejected":
            axis.scatter([d.day + 0.5], [d.accuracy], marker="x", s=90, color="red", zorder=5)
    axis.scatter([], [], marker="^", color="green", label="challenger promoted")
    axis.scatter([], [], marker="x", color="red", label="challenger rejected")
    axis.set_xlabel("simulated day")
    axis.set_ylabel("champion accuracy on the day's labelled data")
    axis.set_title("retrain-trigger demo: continued evaluation, triggers, gated promotions")
    axis.legend(loc="lower left", fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), version) if version.isdigit() else (1 << 30, version)


def run_demo(workdir: Path, settings: DemoSettings | None = None) -> int:
    """The `demo` command."""
    return Demo(workdir, settings or DemoSettings()).run()
