"""The combined app of `retrain-trigger serve` (the real functions-framework apps of main.py)
in-process, over a policy file and a SQLite file in a directory, launching on a FakeLauncher.

`combined_app(workdir)` yields an `App`: a werkzeug test client, the launcher that records
every launch request, and read-only views of the SQLite file (what was processed, rejected,
recorded). Only the launcher is swapped: store, policies, service, routing are the real ones.
"""

from __future__ import annotations

import contextlib
import sqlite3
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from werkzeug.test import Client

from pipeline_client.launching.protocol import FakeLauncher
from tests.conftest import EXAMPLE_TEMPLATE, POLICY_YAML
from triggers.cloud import wiring
from triggers.cloud.serve import create_combined_app
from triggers.config import load_policy_file
from triggers.service import RetrainService
from triggers.state.sqlite import SQLiteStore

TOKEN = "t0ken-4f9c2d7e8a1b6c3d5e0f"
"""The manual trigger's bearer token in these apps (unique enough to search logs for)."""


@dataclass
class App:
    client: Client
    launcher: FakeLauncher
    service: RetrainService
    db: Path
    policy: Path
    workdir: Path

    def _rows(self, sql: str) -> list[tuple[object, ...]]:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def processed(self) -> set[str]:
        """Message ids the store marked processed."""
        return {str(row[0]) for row in self._rows("SELECT message_id FROM processed")}

    def rejected(self) -> dict[str, tuple[str, str]]:
        """Rejected message ids with their (field, reason)."""
        rows = self._rows("SELECT message_id, field, reason FROM rejected")
        return {str(m): (str(f), str(r)) for m, f, r in rows}

    def recorded(self) -> set[str]:
        """Message ids that left points, decisions or a count of unwatched metrics behind."""
        rows = self._rows("SELECT message_id FROM points UNION "
                          "SELECT message_id FROM decisions WHERE message_id IS NOT NULL UNION "
                          "SELECT message_id FROM processed WHERE ignored_metrics > 0")
        return {str(row[0]) for row in rows}


@contextlib.contextmanager
def combined_app(
    workdir: Path,
    token: str | None = TOKEN,
    trust_iam: bool = False,
    policy_yaml: str = POLICY_YAML,
) -> Iterator[App]:
    """The combined app with its environment set (and the working directory `workdir`)."""
    policy = workdir / "policies.yaml"
    policy.write_text(textwrap.dedent(policy_yaml) % {"template": EXAMPLE_TEMPLATE})
    db = workdir / "state.db"
    store: SQLiteStore | None = None
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RETRAIN_POLICY_FILE", str(policy))
        patch.setenv("RETRAIN_STATE", f"sqlite:///{db}")
        patch.setenv("RETRAIN_LAUNCHER", "local")
        if token is None:
            patch.delenv("RETRAIN_MANUAL_TOKEN", raising=False)
        else:
            patch.setenv("RETRAIN_MANUAL_TOKEN", token)
        patch.setenv("RETRAIN_TRUST_IAM", "true" if trust_iam else "false")
        if trust_iam:  # an ID token's audience and who may call: required with trust-IAM
            patch.setenv("RETRAIN_AUDIENCE", "https://manual-trigger.example.test")
            patch.setenv("RETRAIN_INVOKERS", "serviceAccount:ci@test.iam.gserviceaccount.com")
        patch.chdir(workdir)
        wiring.reset()
        try:
            app = create_combined_app()
            store = SQLiteStore(db)
            launcher = FakeLauncher()
            service = RetrainService(load_policy_file(policy), store, launcher)
            patch.setattr(wiring, "_service", service)
            yield App(Client(app), launcher, service, db, policy, workdir)
        finally:
            if store is not None:
                store.close()
    wiring.reset()
