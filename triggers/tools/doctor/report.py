"""Doctor's findings: one `Finding` per check (what is wrong, the command that fixes it), and
the two ways of showing them (a table for people, JSON for machines)."""

from __future__ import annotations

import json
import textwrap
from dataclasses import asdict, dataclass, field
from typing import Literal

Status = Literal["ok", "fail", "skip"]


@dataclass(frozen=True)
class Finding:
    """The result of one check: `fix` is a command (or a short instruction) for a failure."""

    area: str  # "apis", "accounts", "permissions", "templates", "registry", "firestore", ...
    check: str  # what was checked, e.g. "aiplatform.googleapis.com enabled"
    status: Status
    message: str = ""
    fix: str = ""


@dataclass
class Report:
    """Every finding of one doctor run, in the order the checks ran."""

    project: str
    findings: list[Finding] = field(default_factory=list)

    def add(self, area: str, check: str, status: Status, message: str = "",
            fix: str = "") -> Finding:
        finding = Finding(area, check, status, message, fix)
        self.findings.append(finding)
        return finding

    def ok(self, area: str, check: str, message: str = "") -> Finding:
        return self.add(area, check, "ok", message)

    def fail(self, area: str, check: str, message: str, fix: str = "") -> Finding:
        return self.add(area, check, "fail", message, fix)

    def skip(self, area: str, check: str, message: str) -> Finding:
        return self.add(area, check, "skip", message)

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "fail"]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> str:
        counts = {s: sum(1 for f in self.findings if f.status == s) for s in ("ok", "fail", "skip")}
        return json.dumps({"project": self.project, "ok": self.passed, "counts": counts,
                           "findings": [asdict(f) for f in self.findings]}, indent=2)

    def to_table(self, width: int = 100) -> str:
        """A readable table: status, area, check, message; each fix on its own lines below."""
        marks = {"ok": "OK  ", "fail": "FAIL", "skip": "SKIP"}
        area_width = max([len(f.area) for f in self.findings] + [4])
        check_width = min(max([len(f.check) for f in self.findings] + [5]), 58)
        lines = [f"retrain-trigger doctor: project {self.project}", ""]
        lines.append(f"{'':4}  {'AREA':<{area_width}}  {'CHECK':<{check_width}}  DETAIL")
        for f in self.findings:
            lines.append(f"{marks[f.status]}  {f.area:<{area_width}}  "
                         f"{f.check:<{check_width}}  {f.message if f.status != 'fail' else ''}"
                         .rstrip())
            if f.status == "fail":
                indent = " " * 8
                lines += textwrap.wrap(f.message, width, initial_indent=indent,
                                       subsequent_indent=indent)
                if f.fix:
                    lines.append(f"{indent}fix:")
                    lines += [f"{indent}  {line}" for line in f.fix.splitlines()]
        failures = len(self.failures)
        lines.append("")
        lines.append(f"{len(self.findings)} checks: {failures} failed, "
                     f"{sum(1 for f in self.findings if f.status == 'skip')} skipped"
                     if failures else
                     f"{len(self.findings)} checks: all passed "
                     f"({sum(1 for f in self.findings if f.status == 'skip')} skipped)")
        return "\n".join(lines)
