"""A storm of metric events, as Pub/Sub would push them, and the checks of what the store kept.

Used by tests/test_storm.py and tests/test_faults.py (short) and bench/storm.py (full size).
"""

from __future__ import annotations

import base64
import http.client
import json
import queue
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from triggers.state.protocol import StateStore, iso

T0 = datetime(2026, 1, 1, tzinfo=UTC)
THRESHOLD = 0.9
BREACHES = 3
EVALUATION_POINTS = 5
CLOCK_SLACK = 1.0
"""Seconds a request may take between reading the clock and committing its claim."""
METRICS_PATH = "/pubsub/metrics"
OUTCOMES_PATH = "/pubsub/outcomes"

MALFORMED: tuple[tuple[str, Callable[[dict[str, Any]], bytes]], ...] = (
    ("not json", lambda e: b"{not json"),
    ("model missing", lambda e: json.dumps({k: v for k, v in e.items() if k != "model"}).encode()),
    ("metric not a number", lambda e: json.dumps({**e, "metrics": {"accuracy": "high"}}).encode()),
    ("bad window_end", lambda e: json.dumps({**e, "window_end": "yesterday"}).encode()),
    ("unknown field", lambda e: json.dumps({**e, "parameters": {"x": 1}}).encode()),
    ("not an object", lambda e: b"[1, 2, 3]"),
)


def model_name(index: int) -> str:
    return f"storm-{index:02d}"


def policy_yaml(models: int, template: str, cooldown: str = "0s", cloud: bool = True) -> str:
    """One breach policy per model (3 of the latest 5 below 0.9); runs may follow each other."""
    lines = [
        "defaults:",
        f"  guards: {{cooldown: {cooldown}, max_runs: {{count: 10000, per: 1d}}, "
        "skip_if_running: true, run_timeout: 24h}",
        "models:",
    ]
    for index in range(models):
        lines += [
            f"  {model_name(index)}:",
            "    pipeline:",
            f"      template: {template}",
            *(["      pipeline_root: gs://storm-test/root",
               "      service_account: retrain@test-project.iam.gserviceaccount.com"]
              if cloud else []),
            "    policies:",
            "      - {name: accuracy-floor, metric: accuracy, direction: higher_is_better,",
            f"         absolute: {{threshold: {THRESHOLD}}}, breaches_to_trigger: {BREACHES},"
            f" evaluation_points: {EVALUATION_POINTS}}}",
        ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Message:
    """One Pub/Sub message: a valid event (`model`, `window_end`) or a malformed one (`why`)."""

    message_id: str
    data: bytes
    model: str | None = None
    window_end: str | None = None
    why: str | None = None

    def envelope(self) -> bytes:
        """The push body Pub/Sub POSTs to a push endpoint."""
        return json.dumps({
            "message": {"data": base64.b64encode(self.data).decode(), "messageId": self.message_id,
                        "publishTime": "2026-11-26T00:00:00Z", "attributes": {}},
            "subscription": "projects/test-project/subscriptions/storm",
        }).encode()


@dataclass
class StormPlan:
    """What a storm sends: `messages` (unique) and `deliveries` (indices, redeliveries included)."""

    messages: list[Message]
    deliveries: list[int]
    redelivered: int
    out_of_order: int
    malformed: int

    @classmethod
    def build(cls, models: int, events: int, seed: int = 7, redeliver: float = 0.3,
              out_of_order: float = 0.1, malformed: float = 0.01) -> StormPlan:
        """`events` unique messages over `models` models, every value below the threshold.

        Valid events are interleaved model by model in event-time order; `out_of_order` of them
        are moved 1–30 places later (after newer points of their model); `malformed` of the
        messages are broken in one of several ways; `redeliver` of all messages are delivered
        a second time, half of them right after the first (two workers at once), half later.
        """
        rng = random.Random(seed)
        n_bad = round(events * malformed)
        n_valid = events - n_bad
        per_model = [n_valid // models + (1 if i < n_valid % models else 0) for i in range(models)]
        messages: list[Message] = []
        for hour in range(max(per_model)):
            for index in range(models):
                if hour >= per_model[index]:
                    continue
                end = iso((T0 + timedelta(hours=hour)).timestamp())
                event = {"model": model_name(index), "model_version": "1",
                         "metrics": {"accuracy": round(0.8 + rng.random() * 0.05, 4)},
                         "window_end": end, "examples": 1000}
                messages.append(Message(f"m-{index:02d}-{hour:05d}", json.dumps(event).encode(),
                                        model_name(index), end))
        moved = rng.sample(range(len(messages)), round(len(messages) * out_of_order))
        for position in sorted(moved, reverse=True):
            message = messages.pop(position)
            messages.insert(min(len(messages), position + rng.randint(1, 30)), message)
        for number in range(n_bad):
            why, make = MALFORMED[number % len(MALFORMED)]
            sample = {"model": model_name(number % models), "metrics": {"accuracy": 0.5},
                      "window_end": iso(T0.timestamp())}
            messages.insert(rng.randrange(len(messages) + 1),
                            Message(f"bad-{number:05d}", make(sample), why=why))
        again = rng.sample(range(len(messages)), round(len(messages) * redeliver))
        keyed = [(float(index), index) for index in range(len(messages))]
        for n, index in enumerate(again):  # always after the first delivery
            later = index + 0.5 if n % 2 == 0 else rng.uniform(index + 0.5, len(messages))
            keyed.append((later, index))
        deliveries = [index for _, index in sorted(keyed)]
        return cls(messages, deliveries, len(again), len(moved), n_bad)

    @property
    def valid(self) -> list[Message]:
        return [m for m in self.messages if m.why is None]

    @property
    def bad(self) -> list[Message]:
        return [m for m in self.messages if m.why is not None]


@dataclass
class StormReport:
    """What the client saw: every delivery ends acknowledged (2xx) after its retries."""

    deliveries: int = 0
    acked: int = 0
    retries: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    @property
    def rate(self) -> float:
        return self.acked / self.elapsed if self.elapsed else 0.0


class PushClient:
    """Pushes bodies to a URL like Pub/Sub: `threads` at once, a non-2xx answer or a broken
    connection is retried with backoff (capped) until acknowledged or `deadline` passes."""

    def __init__(self, base: str, threads: int = 16, max_backoff: float = 1.0,
                 deadline: float = 600.0) -> None:
        self.base = base
        self.threads = threads
        self.max_backoff = max_backoff
        self.deadline = deadline

    def push(self, path: str, bodies: Sequence[bytes],
             on_ack: Callable[[int], None] | None = None) -> StormReport:
        report = StormReport(deliveries=len(bodies))
        work: queue.Queue[tuple[int, int]] = queue.Queue()
        for index in range(len(bodies)):
            work.put((index, 0))
        lock = threading.Lock()
        remaining = [len(bodies)]
        done = threading.Event()
        if not bodies:
            done.set()
        stop_at = time.monotonic() + self.deadline

        def worker() -> None:
            conn: http.client.HTTPConnection | None = None
            while not done.is_set() and time.monotonic() < stop_at:
                try:
                    index, attempt = work.get(timeout=0.1)
                except queue.Empty:
                    continue
                if conn is None:
                    conn = self._connect()
                started = time.perf_counter()
                try:
                    conn.request("POST", path, body=bodies[index],
                                 headers={"Content-Type": "application/json"})
                    response = conn.getresponse()
                    response.read()
                    status = str(response.status)
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    conn = None
                    status = type(exc).__name__
                latency = time.perf_counter() - started
                with lock:
                    report.statuses[status] += 1
                    if status.startswith("2"):
                        report.acked += 1
                        report.latencies.append(latency)
                        remaining[0] -= 1
                        if remaining[0] == 0:
                            done.set()
                    else:
                        report.retries += 1
                if status.startswith("2"):
                    if on_ack is not None:
                        on_ack(index)
                    continue
                time.sleep(min(self.max_backoff, 0.02 * 2 ** attempt))
                work.put((index, attempt + 1))
            if conn is not None:
                conn.close()

        started = time.perf_counter()
        pool = [threading.Thread(target=worker, daemon=True) for _ in range(self.threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        report.elapsed = time.perf_counter() - started
        if not done.is_set():
            raise AssertionError(
                f"{remaining[0]} of {len(bodies)} deliveries never acknowledged in "
                f"{self.deadline:.0f} s; answers seen: {dict(report.statuses)}")
        return report

    def _connect(self) -> http.client.HTTPConnection:
        parts = urlsplit(self.base)
        return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)


def storm(base: str, plan: StormPlan, threads: int = 16, deadline: float = 600.0,
          on_ack: Callable[[int], None] | None = None) -> StormReport:
    """Push every delivery of `plan` to `base`/pubsub/metrics until each is acknowledged."""
    bodies = [plan.messages[i].envelope() for i in plan.deliveries]
    return PushClient(base, threads, deadline=deadline).push(METRICS_PATH, bodies, on_ack)


class BackgroundStorm:
    """A storm pushed from a background thread; `when_acked(n)` waits for progress."""

    def __init__(self, base: str, plan: StormPlan, threads: int = 12) -> None:
        self.acked = 0
        self._cond = threading.Condition()
        self.report: StormReport | None = None
        self.error: BaseException | None = None

        def on_ack(_: int) -> None:
            with self._cond:
                self.acked += 1
                self._cond.notify_all()

        def push() -> None:
            try:
                self.report = storm(base, plan, threads=threads, deadline=300, on_ack=on_ack)
            except BaseException as exc:  # noqa: BLE001 - re-raised by result()
                self.error = exc

        self._thread = threading.Thread(target=push, daemon=True)
        self._thread.start()

    def when_acked(self, n: int, timeout: float = 300) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.acked >= n, timeout), "storm stalled"

    def result(self) -> StormReport:
        self._thread.join()
        if self.error is not None:
            raise self.error
        assert self.report is not None
        return self.report


def hold_sqlite_lock(db: str | Path, seconds: float) -> None:
    """Another process's exclusive lock on the SQLite file (a backup, a stuck writer)."""
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    time.sleep(seconds)
    conn.execute("ROLLBACK")
    conn.close()


def outcome_body(model: str, run_id: str, trigger_id: str, decision: str = "rejected") -> bytes:
    """The message a pipeline's last step publishes, as a push body."""
    data = {"model": model, "run_id": run_id, "trigger_id": trigger_id, "decision": decision,
            "report": {"storm": True}}
    return Message(f"outcome-{run_id}", json.dumps(data).encode()).envelope()


class RunFinisher:
    """Plays the pipelines: every job the fake Vertex created is marked succeeded after `after`
    seconds and its outcome ("rejected": the challenger lost) pushed to /pubsub/outcomes."""

    def __init__(self, base: str, vertex: Any, after: float = 0.2, deadline: float = 120) -> None:
        self.client = PushClient(base, threads=2, deadline=deadline)
        self.vertex = vertex
        self.after = after
        self.finished: set[str] = set()
        self.failures: list[str] = []
        """Outcome pushes never acknowledged within `deadline` (each retried next round)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RunFinisher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def finish_due(self, everything: bool = False) -> int:
        due = []
        with self.vertex._lock:
            for run_id, job in self.vertex.jobs.items():
                if run_id in self.finished:
                    continue
                created = datetime.fromisoformat(job["createTime"].replace("Z", "+00:00"))
                if everything or time.time() - created.timestamp() >= self.after:
                    due.append((run_id, job))
        for run_id, job in due:
            self.vertex.set_state(run_id, "SUCCEEDED")  # an ended job keeps its endTime
            labels = job.get("labels", {})
            body = outcome_body(labels.get("model", ""), run_id, labels.get("trigger-id", ""))
            self.client.push(OUTCOMES_PATH, [body])
            self.finished.add(run_id)
        return len(due)

    def _loop(self) -> None:
        """Until stopped; an outcome push that was never acknowledged is recorded (the test
        asserts there are none) and tried again, instead of ending the loop unseen."""
        while not self._stop.wait(0.05):
            try:
                self.finish_due()
            except AssertionError as exc:
                self.failures.append(str(exc))


@dataclass
class StoreCheck:
    """What the store holds after a storm, against the plan; `problems` must be empty."""

    points: int = 0
    duplicates: int = 0
    lost: int = 0
    rejected: int = 0
    runs: int = 0
    fired: int = 0
    suppressed: int = 0
    problems: list[str] = field(default_factory=list)

    def fail(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)


def check_store(store: StateStore, plan: StormPlan, models: Iterable[str],
                vertex_jobs: Iterable[str] | None = None) -> StoreCheck:
    """Every valid point once, every malformed message rejected with its reason, one run per
    fired decision and per run id at the launcher, no two runs of a model in flight at once,
    and every firing point recorded as fired or suppressed."""
    check = StoreCheck()
    expected = Counter((m.model, m.window_end) for m in plan.valid)
    all_runs = []
    for model in models:
        stored = Counter((p.model, iso(p.window_end)) for p in store.latest_points(model, 10**7))
        mine = {key: n for key, n in expected.items() if key[0] == model}
        check.points += sum(stored.values())
        for key, n in stored.items():
            if n > 1 or key not in mine:
                check.duplicates += n - (1 if key in mine else 0)
                check.fail(f"point {key} stored {n} times (expected {mine.get(key, 0)})")
        for key in mine:
            if key not in stored:
                check.lost += 1
                check.fail(f"point {key} lost")
        decisions = store.decisions(model, limit=10**7)
        runs = store.runs(model, limit=10**7)
        all_runs += runs
        fired = [d for d in decisions if d.kind == "fired"]
        check.fired += len(fired)
        check.suppressed += sum(1 for d in decisions if d.kind == "suppressed")
        by_run = Counter(d.run_id for d in fired)
        for run in runs:
            if by_run.get(run.run_id, 0) != 1:
                seen = sorted((d.kind, iso(d.event_time), d.message_id) for d in decisions
                              if d.run_id == run.run_id or d.trigger_id == run.trigger_id)
                check.fail(f"run {run.run_id} ({run.state}, claimed by {run.claimed_by}) has "
                           f"{by_run.get(run.run_id, 0)} fired decisions; its decisions: {seen}")
        for run_id in set(by_run) - {r.run_id for r in runs}:
            check.fail(f"fired decision for run {run_id} that does not exist")
        ordered = sorted(runs, key=lambda r: r.created_at)
        for before, after in zip(ordered, ordered[1:], strict=False):
            # times are read when a request starts, not when it commits: with a launcher's
            # own timeline (check_launcher_timeline) this check is left to it
            if vertex_jobs is None and (before.ended_at is None
                                        or before.ended_at > after.created_at + CLOCK_SLACK):
                check.fail(f"{model}: run {after.run_id} claimed while {before.run_id} in flight")
        triggered = {d.event_time for d in decisions if d.kind in ("fired", "suppressed")}
        start = T0.timestamp() + 3600 * (EVALUATION_POINTS - 1)  # the first that can fire
        ends = sorted(t for _, end in mine if (t := _timestamp(end)) >= start)
        missing = [iso(t) for t in ends if t not in triggered]
        if missing:
            check.fail(f"{model}: {len(missing)} breaching points with no fired/suppressed "
                       f"decision, first {missing[:3]}")
    check.runs = len(all_runs)
    rejected = {r.message_id: r for r in store.rejected_events(limit=10**7)}
    for message in plan.bad:
        got = rejected.get(message.message_id)
        if got is None:
            check.fail(f"malformed {message.message_id} ({message.why}) not stored as rejected")
        elif not (got.reason and got.field):
            check.fail(f"rejected {message.message_id} has no reason/field: {got}")
        else:
            check.rejected += 1
    if vertex_jobs is not None:
        jobs, run_ids = set(vertex_jobs), {r.run_id for r in all_runs}
        if jobs != run_ids:
            check.fail(f"launcher has {len(jobs)} jobs, the store {len(run_ids)} runs: "
                       f"jobs without a run {sorted(jobs - run_ids)[:3]}, "
                       f"runs never launched {sorted(run_ids - jobs)[:3]}")
    return check


def check_launcher_timeline(jobs: dict[str, dict[str, Any]]) -> list[str]:
    """From the fake Vertex's own clock: no job of a model created before the model's previous
    job had ended (a job still running at the end must be the model's last)."""
    problems = []
    by_model: dict[str, list[dict[str, Any]]] = {}
    for job in jobs.values():
        by_model.setdefault(job.get("labels", {}).get("model", ""), []).append(job)
    for model, mine in by_model.items():
        mine.sort(key=lambda job: job["createTime"])
        for before, after in zip(mine, mine[1:], strict=False):
            if "endTime" not in before or before["endTime"] > after["createTime"]:
                problems.append(f"{model}: job {after['name']} created at {after['createTime']} "
                                f"while {before['name']} ran (ended {before.get('endTime')})")
    return problems


def _timestamp(text: str | None) -> float:
    assert text is not None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def figures(plan: StormPlan, report: StormReport, check: StoreCheck) -> str:
    """The storm's figures, one line each."""
    return "\n".join([
        f"messages {len(plan.messages)} ({len(plan.valid)} valid, {plan.malformed} malformed, "
        f"{plan.out_of_order} out of order), deliveries {len(plan.deliveries)} "
        f"({plan.redelivered} redelivered)",
        f"held {report.rate:.0f} deliveries/s over {report.elapsed:.1f} s; latency p50 "
        f"{report.percentile(0.5) * 1000:.1f} ms, p99 {report.percentile(0.99) * 1000:.1f} ms; "
        f"retried {report.retries} ({dict(report.statuses)})",
        f"points {check.points} stored, duplicates {check.duplicates}, lost {check.lost}; "
        f"rejected {check.rejected}/{plan.malformed}; runs {check.runs}, fired {check.fired}, "
        f"suppressed {check.suppressed}; problems {len(check.problems)}",
    ])
