"""The `publish` command: read metric events from JSONL or CSV and send them to the service,
either over HTTP(S) to a running `manual_trigger` (`POST /events`), to a Pub/Sub topic, or as a
file uploaded to a bucket for `on_evaluation_file`.

Input formats and how lines are numbered and merged: `triggers.event_files` (shared with
`on_evaluation_file`).

Progress callbacks receive an increment (always 1, once per finished event), so `tqdm.update`
or `click.progressbar(...).update` can be passed directly.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from triggers.event_files import (  # noqa: F401  (re-exported: publish reads with these)
    CSV_OPTIONAL,
    CSV_REQUIRED,
    JSONL_SUFFIXES,
    SkipRow,
    detect_format,
    read_events,
    read_events_text,
)

Progress = Callable[[int], None]
NumberedEvents = Iterable["tuple[int, Mapping[str, Any]] | Mapping[str, Any]"]

MAX_ERROR_TEXT = 500


@dataclass
class LineError:
    """Why one input event was not accepted; `status` is the HTTP status, if there was one."""

    line: int
    error: str
    status: int | None = None

    def __str__(self) -> str:
        status = f" [HTTP {self.status}]" if self.status is not None else ""
        return f"line {self.line}{status}: {self.error}"


@dataclass
class PublishReport:
    """What a publish did: `sent` attempts, each ending accepted, rejected or failed.

    rejected = permanently refused (a 4xx from the service, or not serialisable as JSON);
    failed = may succeed if retried (5xx, timeout, unreachable, Pub/Sub publish error).
    `aborted` says why the remaining events were not sent (bad token, server unreachable).
    `launched` collects the run ids the service reported launching (HTTP only), and
    `message_ids` the Pub/Sub ids of published messages by input line (topic only).
    """

    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    errors: list[LineError] = field(default_factory=list)
    aborted: str | None = None
    launched: list[str] = field(default_factory=list)
    message_ids: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every event was accepted and nothing was left unsent."""
        return self.rejected == 0 and self.failed == 0 and self.aborted is None

    def summary(self) -> str:
        """One line for humans, e.g. `sent 3: 2 accepted, 1 rejected, 0 failed`."""
        text = (
            f"sent {self.sent}: {self.accepted} accepted, {self.rejected} rejected, "
            f"{self.failed} failed"
        )
        if self.launched:
            text += f"; launched {', '.join(self.launched)}"
        if self.aborted:
            text += f"; aborted: {self.aborted}"
        return text


# -- reading: triggers.event_files ---------------------------------------------------------

def _numbered(events: NumberedEvents) -> Iterator[tuple[int, Mapping[str, Any]]]:
    for index, item in enumerate(events, start=1):
        if isinstance(item, tuple):
            yield item
        else:
            yield index, item


def _encode(event: Mapping[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


# -- HTTP -------------------------------------------------------------------------------------


def publish_to_url(
    events: NumberedEvents,
    url: str,
    token: str | None = None,
    timeout: float = 10,
    *,
    progress: Progress | None = None,
    retries: int = 2,
    backoff: float = 0.5,
) -> PublishReport:
    """POST each event as bare JSON to `{url}/events`; classify answers by HTTP status.

    2xx accepted; 4xx rejected (the service's `{"error", "field"}` is kept per line);
    5xx, 408, 429, timeouts and connection errors are retried `retries` times (with
    `backoff`, doubling; safe because the service deduplicates identical bodies) and then
    count as failed. A 401/403 or an unreachable server aborts the rest of the run.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"url must be http(s)://host[:port][/prefix], got {url!r}")
    endpoint = url.rstrip("/") + "/events"
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    report = PublishReport()
    for line, event in _numbered(events):
        try:
            body = _encode(event)
        except (TypeError, ValueError) as exc:
            report.sent += 1
            report.rejected += 1
            report.errors.append(LineError(line, f"cannot encode as JSON: {exc}"))
            _tick(progress)
            continue
        report.sent += 1
        status, answer, error, unreachable = _post_with_retries(
            endpoint, body, headers, timeout, retries, backoff
        )
        if status is not None and 200 <= status < 300:
            report.accepted += 1
            launched = answer.get("launched") if isinstance(answer, dict) else None
            if isinstance(launched, list):
                report.launched.extend(str(run) for run in launched)
        elif status is not None and 400 <= status < 500 and status not in (408, 429):
            report.rejected += 1
            report.errors.append(LineError(line, error, status))
            if status in (401, 403):
                report.aborted = f"HTTP {status} from {endpoint}: {error}"
        else:
            report.failed += 1
            report.errors.append(LineError(line, error, status))
            if unreachable:
                report.aborted = f"cannot reach {endpoint}: {error}"
        _tick(progress)
        if report.aborted:
            break
    return report


def _post_with_retries(
    endpoint: str,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    retries: int,
    backoff: float,
) -> tuple[int | None, Any, str, bool]:
    """(status or None, parsed JSON answer, error text, unreachable) after retrying."""
    attempt = 0
    while True:
        status, answer, error, unreachable = _post(endpoint, body, headers, timeout)
        transient = status is None or status >= 500 or status in (408, 429)
        if not transient or attempt >= retries:
            return status, answer, error, unreachable
        time.sleep(backoff * 2**attempt)
        attempt += 1


def _post(
    endpoint: str, body: bytes, headers: dict[str, str], timeout: float
) -> tuple[int | None, Any, str, bool]:
    request = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, _json_or_none(response.read()), "", False
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        exc.close()
        answer = _json_or_none(raw)
        return exc.code, answer, _error_text(answer, raw, exc.reason), False
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            return None, None, f"timed out after {timeout:g}s", False
        return None, None, f"{reason}", True
    except TimeoutError:
        return None, None, f"timed out after {timeout:g}s", False
    except (ConnectionError, OSError) as exc:  # reset mid-answer, etc.
        return None, None, f"{type(exc).__name__}: {exc}", False


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _error_text(answer: Any, raw: bytes, reason: Any) -> str:
    if isinstance(answer, dict) and answer.get("error"):
        text = str(answer["error"])
        if answer.get("field"):
            text = f"{answer['field']}: {text}"
    else:
        text = raw.decode("utf-8", errors="replace").strip() or str(reason)
    return text[:MAX_ERROR_TEXT]


def _tick(progress: Progress | None) -> None:
    if progress is not None:
        progress(1)


# -- Pub/Sub ----------------------------------------------------------------------------------


def publish_to_topic(
    events: NumberedEvents,
    topic_path: str,
    ordering: bool = False,
    *,
    progress: Progress | None = None,
    timeout: float = 60.0,
    publisher: Any = None,
) -> PublishReport:
    """Publish each event to `topic_path` (`projects/P/topics/T`) and wait for every ack.

    data = the event as compact UTF-8 JSON; attributes `model=<model>`. With `ordering`,
    messages carry `ordering_key=<model>` so one model's events are delivered in file order
    (the subscription must enable ordering too). Honours PUBSUB_EMULATOR_HOST. `publisher`
    (a PublisherClient) is for callers that manage their own; otherwise one is created and
    stopped here. Pub/Sub does not judge the content, so a bad event still counts as
    accepted here; it will be rejected by the service.
    """
    if not topic_path.startswith("projects/") or "/topics/" not in topic_path:
        raise ValueError(f"topic must be projects/PROJECT/topics/TOPIC, got {topic_path!r}")
    own = publisher is None
    if own:
        from google.cloud import pubsub_v1  # type: ignore[attr-defined]

        options = pubsub_v1.types.PublisherOptions(enable_message_ordering=ordering)
        publisher = pubsub_v1.PublisherClient(publisher_options=options)
    report = PublishReport()
    pending: dict[concurrent.futures.Future[str], int] = {}
    try:
        for line, event in _numbered(events):
            report.sent += 1
            try:
                data = _encode(event)
            except (TypeError, ValueError) as exc:
                report.rejected += 1
                report.errors.append(LineError(line, f"cannot encode as JSON: {exc}"))
                _tick(progress)
                continue
            model = event.get("model")
            attributes = {"model": model} if isinstance(model, str) and model else {}
            kwargs: dict[str, Any] = dict(attributes)
            if ordering and attributes:
                kwargs["ordering_key"] = model
            try:
                future = publisher.publish(topic_path, data, **kwargs)
            except Exception as exc:  # noqa: BLE001 - e.g. PublishToPausedOrderingKeyException
                report.failed += 1
                report.errors.append(LineError(line, f"{type(exc).__name__}: {exc}"))
                _tick(progress)
                continue
            pending[future] = line
        _collect(pending, report, timeout, progress)
    finally:
        if own:
            publisher.stop()
            publisher.transport.close()
    return report


def _collect(
    pending: dict[concurrent.futures.Future[str], int],
    report: PublishReport,
    timeout: float,
    progress: Progress | None,
) -> None:
    done: set[concurrent.futures.Future[str]] = set()
    try:
        for future in concurrent.futures.as_completed(pending, timeout=timeout):
            done.add(future)
            line = pending[future]
            try:
                report.message_ids[line] = future.result()
                report.accepted += 1
            except Exception as exc:  # noqa: BLE001 - any publish error fails that event
                report.failed += 1
                report.errors.append(LineError(line, f"{type(exc).__name__}: {exc}"))
            _tick(progress)
    except TimeoutError:
        for future, line in pending.items():
            if future not in done:
                future.cancel()
                report.failed += 1
                report.errors.append(LineError(line, f"no publish ack within {timeout:g}s"))
                _tick(progress)
    report.errors.sort(key=lambda error: error.line)
    report.message_ids = dict(sorted(report.message_ids.items()))


# -- Cloud Storage ----------------------------------------------------------------------------


@dataclass
class Upload:
    """One evaluation file written to Cloud Storage: `url` is gs://BUCKET/OBJECT."""

    url: str
    generation: int
    size: int
    events: int


def upload_to_bucket(path: str | Path, bucket_url: str, *, client: Any = None) -> Upload:
    """Validate the JSONL or CSV file `path` as `read_events` does, then write it unchanged
    to `bucket_url` (gs://BUCKET or gs://BUCKET/PREFIX/) as PREFIX/<file name>, for
    on_evaluation_file. Refuses a file over the size on_evaluation_file reads, and an object
    that already exists (a new generation would be read again). Honours STORAGE_EMULATOR_HOST.
    Raises ValueError naming what is wrong."""
    from triggers.cloud.evaluation_files import MAX_OBJECT_BYTES

    file = Path(path)
    if str(path) == "-":
        raise ValueError("--bucket uploads a file: name one (its extension picks the format)")
    if not bucket_url.startswith("gs://") or not bucket_url[5:].split("/", 1)[0]:
        raise ValueError(f"--bucket must be gs://BUCKET or gs://BUCKET/PREFIX, got {bucket_url!r}")
    size = file.stat().st_size
    if size > MAX_OBJECT_BYTES:
        raise ValueError(f"{file} is {size} bytes, over the {MAX_OBJECT_BYTES} bytes (10 MiB) "
                         "on_evaluation_file reads: split it into several files")
    events = len(list(read_events(file)))  # the first malformed line raises, naming it
    bucket, _, prefix = bucket_url[5:].partition("/")
    name = f"{prefix.strip('/')}/{file.name}" if prefix.strip("/") else file.name
    content_type = "text/csv" if _detect_format_of(file) == "csv" else "application/x-ndjson"
    if client is None:
        from google.cloud import storage  # type: ignore[attr-defined]

        client = storage.Client()
    blob = client.bucket(bucket).blob(name)
    from google.api_core import exceptions

    exists = ValueError(f"gs://{bucket}/{name} already exists: on_evaluation_file read it "
                        "already; upload under another name")
    if blob.exists():  # ifGenerationMatch=0 below is the atomic check; emulators may ignore it
        raise exists
    try:
        blob.upload_from_filename(str(file), content_type=content_type, if_generation_match=0)
    except exceptions.PreconditionFailed:
        raise exists from None
    return Upload(f"gs://{bucket}/{name}", int(blob.generation), size, events)


def _detect_format_of(path: Path) -> str:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return detect_format(path, handle)
