"""`retrain-trigger demo` (the README's run command) in its short mode: the whole loop for
real — drifting stream, policies, kfp.local runs, gate, registry — and its records agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipeline_client.promotion.registries import LocalModelRegistry
from tests.conftest import ROOT
from triggers.state.sqlite import SQLiteStore
from triggers.tools.demo import MODEL


def test_the_demo_rejects_a_noise_dip_promotes_on_drift_and_recovers(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = subprocess.run(  # a relative --workdir, as `make run` passes its default
        [sys.executable, "-m", "triggers", "demo", "--workdir", "demo", "--days", "30",
         "--examples", "1000"],
        cwd=tmp_path, capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    timeline = json.loads((workdir / "timeline.json").read_text())
    days, runs = timeline["days"], timeline["runs"]
    assert len(days) == 30

    # The first model is promoted on the floors alone; then the labelling incident (days 9
    # and 11) fires the floor and the gate rejects; then the drift fires and a challenger wins.
    assert runs[0]["decision"] == "promoted" and runs[0]["champion_version"] == "1"
    triggered = [d for d in days if d["run_id"]]
    assert triggered[0]["day"] == 11 and triggered[0]["outcome"] == "rejected"
    assert triggered[0]["fired"] == ["accuracy-floor"]
    promotions = [d for d in triggered if d["outcome"] == "promoted"]
    assert promotions and all(d["day"] > 14 for d in promotions)

    # Metrics recover after each promotion: the new champion's first day beats the trigger day.
    for trigger in promotions:
        following = next(d for d in days if d["day"] == trigger["day"] + 1)
        assert following["version"] == trigger["new_version"]
        assert following["accuracy"] > trigger["accuracy"] + 0.01
    # After the rejection the champion stayed.
    rejected_day = triggered[0]["day"]
    assert next(d for d in days if d["day"] == rejected_day + 1)["version"] == "1"

    # The service's outcome records say the same, with the gate's report kept with each run.
    store = SQLiteStore(workdir / "state.db")
    ended = {r.run_id: r for r in store.runs(MODEL, limit=50)}
    for entry in triggered:
        run = ended[entry["run_id"]]
        assert run.state == entry["outcome"]
        assert run.outcome is not None
        gate = run.outcome["report"]["gate"]
        assert gate["decision"] == ("promote" if entry["outcome"] == "promoted" else "reject")
        assert {c["kind"] for c in gate["checks"]} >= {"primary", "guardrail", "floor"}
    # Each outcome arrived as the pipeline's own published message (the launcher's fallback
    # delivery came second and changed nothing).
    ends = [d for d in store.decisions(MODEL, 500)
            if d.kind in ("promoted", "rejected_challenger")]
    assert len(ends) == len(runs)
    assert all((d.message_id or "").startswith("outcome-") for d in ends), ends
    assert store.model_state(MODEL).champion_version == str(len(promotions) + 1)

    registry = LocalModelRegistry(workdir / "registry")
    champion = registry.champion(MODEL)
    assert champion is not None and champion.version == str(len(promotions) + 1)
    assert (workdir / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "timeline (" in result.stdout and "rejected 1" in result.stdout


def test_the_demo_never_empties_a_folder_it_did_not_make(tmp_path: Path) -> None:
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    result = subprocess.run(
        [sys.executable, "-m", "triggers", "demo", "--workdir", str(precious), "--days", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "is not empty and not a demo work directory" in result.stdout
    assert (precious / "chapter1.tex").read_text() == "years of work"


def test_the_demo_keeps_serving_the_page_until_interrupted(tmp_path: Path) -> None:
    import http.cookiejar
    import re
    import signal
    import urllib.request

    demo = subprocess.Popen(
        [sys.executable, "-m", "triggers", "demo", "--workdir", "demo", "--days", "2",
         "--examples", "500", "--keep-serving"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert demo.stdout is not None
        lines = []
        for line in demo.stdout:
            lines.append(line)
            if line.startswith("the page: "):
                break
        found = re.search(r"the page: (http://\S+)", "".join(lines))
        assert found, "".join(lines)
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(
            http.cookiejar.CookieJar()))
        browser.addheaders = [("Accept", "text/html")]  # as a browser asks, redirects included
        with browser.open(found.group(1), timeout=30) as answer:  # logs in, then the list
            page = answer.read().decode()
            assert answer.headers["Content-Type"].startswith("text/html")
        assert f'data-model="{MODEL}"' in page and "?token=" not in answer.url
        request = urllib.request.Request(answer.url.rstrip("/") + f"/models/{MODEL}",
                                         headers={"Accept": "text/html"})
        with browser.open(request, timeout=30) as answer:
            assert 'data-metric="accuracy"' in answer.read().decode()
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=30) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
