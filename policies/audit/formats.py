"""Audit report renderers: a readable table, JSON, SARIF 2.1.0 and JUnit XML."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import Sequence
from typing import IO, Any
from xml.etree import ElementTree as ET

from policies.engine import Finding, Report
from policies.resource import Resource
from policies.rules import SEVERITIES, Rule
from policies.sources import InputProblem

TOOL = "edgefleet-audit"
TOOL_VERSION = "1.0.0"
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
_FILE_LINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+)$")


def _where(res: Resource | None) -> str:
    return res.source if res is not None else "stack"


def _subject(f: Finding) -> str:
    return f.resource.label if f.resource is not None else "stack"


def summary(report: Report, problems: Sequence[InputProblem], fail_on: str) -> dict[str, Any]:
    counted = [f for f in report.findings if not f.exempt]
    return {
        "resources": report.resources,
        "findings": len(counted),
        "failing": len(report.failing(fail_on)) if fail_on != "none" else 0,
        "exempt": sum(f.exempt for f in report.findings),
        "bySeverity": {s: sum(f.severity == s for f in counted) for s in SEVERITIES},
        "failOn": fail_on,
        "inputProblems": sum(p.fatal for p in problems),
    }


def render_json(report: Report, problems: Sequence[InputProblem], rules: Sequence[Rule], fail_on: str) -> str:
    doc = {
        "tool": {"name": TOOL, "version": TOOL_VERSION, "rules": len(rules)},
        "summary": summary(report, problems, fail_on),
        "findings": [
            {
                "rule": f.rule.name,
                "title": f.rule.title,
                "category": f.rule.category,
                "severity": f.severity,
                "level": f.level,
                "resource": _subject(f),
                "type": f.resource.type if f.resource else "pulumi:pulumi:Stack",
                "source": _where(f.resource),
                "path": f.violation.path,
                "message": f.message,
                "remediation": f.rule.remediation,
                "exempt": f.exempt,
                "exemption": f.exemption.describe() if f.exemption else None,
            }
            for f in report.findings
        ],
        "exemptions": [
            {
                "resource": res.label,
                "source": res.source,
                "rules": list(e.rules),
                "reason": e.reason,
                "until": e.until,
                "valid": e.valid,
                "problems": list(e.problems),
            }
            for res, e in report.exemptions
        ],
        "problems": [{"file": p.file, "line": p.line, "message": p.message, "fatal": p.fatal} for p in problems],
    }
    return json.dumps(doc, indent=2) + "\n"


def _sarif_location(source: str, logical: str, kind: str) -> dict[str, Any]:
    loc: dict[str, Any] = {"logicalLocations": [{"fullyQualifiedName": logical, "kind": kind}]}
    m = _FILE_LINE.match(source)
    if m:
        loc["physicalLocation"] = {
            "artifactLocation": {"uri": m["file"]},
            "region": {"startLine": max(1, int(m["line"]))},
        }
    return loc


def render_sarif(report: Report, problems: Sequence[InputProblem], rules: Sequence[Rule], fail_on: str) -> str:
    index = {r.name: i for i, r in enumerate(rules)}
    results = []
    for f in report.findings:
        result: dict[str, Any] = {
            "ruleId": f.rule.name,
            "ruleIndex": index[f.rule.name],
            "level": "error" if f.level == "mandatory" else "warning",
            "message": {"text": f"{_subject(f)}: {f.message}"},
            "locations": [_sarif_location(_where(f.resource), f.resource.urn if f.resource else "stack", "resource")],
            "properties": {"severity": f.severity, "enforcementLevel": f.level, "path": f.violation.path},
        }
        if f.exempt and f.exemption is not None:
            result["suppressions"] = [{"kind": "inSource", "justification": f.exemption.describe()}]
        results.append(result)
    notifications = [
        {
            "level": "error" if p.fatal else "note",
            "message": {"text": p.message},
            "locations": [_sarif_location(f"{p.file}:{p.line}" if p.line else p.file, p.file, "module")],
        }
        for p in problems
    ]
    doc = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": TOOL,
                        "version": TOOL_VERSION,
                        "rules": [
                            {
                                "id": r.name,
                                "name": "".join(w.capitalize() for w in r.name.split("-")),
                                "shortDescription": {"text": r.title},
                                "fullDescription": {"text": r.description},
                                "help": {"text": r.remediation},
                                "defaultConfiguration": {
                                    "level": "error" if r.enforcement == "mandatory" else "warning"
                                },
                                "properties": {
                                    "category": r.category,
                                    "severity": r.severity,
                                    "tags": [r.category, "security"],
                                },
                            }
                            for r in rules
                        ],
                    }
                },
                "invocations": [
                    {
                        "executionSuccessful": not any(p.fatal for p in problems),
                        "toolExecutionNotifications": notifications,
                    }
                ],
                "results": results,
            }
        ],
    }
    return json.dumps(doc, indent=2) + "\n"


def render_junit(report: Report, problems: Sequence[InputProblem], rules: Sequence[Rule], fail_on: str) -> str:
    by_rule: dict[str, list[Finding]] = {}
    for f in report.findings:
        by_rule.setdefault(f.rule.name, []).append(f)
    root = ET.Element("testsuites", name=TOOL)
    totals: Counter[str] = Counter()
    for r in rules:
        findings = by_rule.get(r.name, [])
        suite = ET.SubElement(root, "testsuite", name=r.name)
        counts: Counter[str] = Counter()
        if not findings:
            ET.SubElement(
                suite, "testcase", classname=f"{r.category}.{r.name}", name=f"{report.resources} resources comply"
            )
            counts["tests"] += 1
        for f in findings:
            case = ET.SubElement(suite, "testcase", classname=f"{r.category}.{r.name}", name=_subject(f))
            m = _FILE_LINE.match(_where(f.resource))
            if m:
                case.set("file", m["file"])
                case.set("line", m["line"])
            counts["tests"] += 1
            if f.exempt and f.exemption is not None:
                ET.SubElement(case, "skipped", message=f.exemption.describe())
                counts["skipped"] += 1
            else:
                failure = ET.SubElement(case, "failure", message=f.message, type=f"{f.severity}/{f.level}")
                failure.text = f"{f.message}\nat {_where(f.resource)} {f.violation.path}\nremediation: {r.remediation}"
                counts["failures"] += 1
        for key in ("tests", "failures", "skipped"):
            suite.set(key, str(counts[key]))
        suite.set("errors", "0")
        totals.update(counts)
    if problems:
        suite = ET.SubElement(
            root,
            "testsuite",
            name="inputs",
            tests=str(len(problems)),
            failures="0",
            errors=str(sum(p.fatal for p in problems)),
            skipped="0",
        )
        for p in problems:
            case = ET.SubElement(suite, "testcase", classname="inputs", name=str(p))
            if p.fatal:
                ET.SubElement(case, "error", message=p.message, type="input")
        totals["tests"] += len(problems)
        totals["errors"] += sum(p.fatal for p in problems)
    for key in ("tests", "failures", "errors", "skipped"):
        root.set(key, str(totals[key]))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def render_table(
    report: Report, problems: Sequence[InputProblem], rules: Sequence[Rule], fail_on: str, stream: IO[str] | None = None
) -> str:
    from rich.console import Console
    from rich.table import Table

    stream = stream or sys.stdout
    interactive = hasattr(stream, "isatty") and stream.isatty()
    console = Console(file=stream, width=None if interactive else 160, no_color=not interactive, highlight=False)
    colors = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "cyan"}
    order = {s: i for i, s in enumerate(reversed(SEVERITIES))}
    findings = sorted(
        (f for f in report.findings if not f.exempt), key=lambda f: (order[f.severity], f.rule.name, _subject(f))
    )
    if findings:
        table = Table(title="Policy violations", show_lines=False)
        for col in ("Severity", "Level", "Rule", "Resource", "Message", "Where"):
            table.add_column(col, overflow="fold")
        for f in findings:
            table.add_row(
                f"[{colors[f.severity]}]{f.severity}[/]",
                f.level,
                f.rule.name,
                _subject(f),
                f.message,
                _where(f.resource),
            )
        console.print(table)
    if report.exemptions:
        table = Table(title="Exemptions")
        for col in ("Resource", "Exemption", "Where"):
            table.add_column(col, overflow="fold")
        for res, e in report.exemptions:
            table.add_row(res.label, e.describe(), res.source)
        console.print(table)
    s = summary(report, problems, fail_on)
    by = ", ".join(f"{s['bySeverity'][k]} {k}" for k in reversed(SEVERITIES) if s["bySeverity"][k])
    console.print(
        f"{s['resources']} resources, {s['findings']} violations{' (' + by + ')' if by else ''}, "
        f"{s['exempt']} exempt, {len(report.exemptions)} exemption annotations; "
        f"failing at --fail-on {fail_on}: {s['failing']}"
    )
    return ""


RENDERERS = {"json": render_json, "sarif": render_sarif, "junit": render_junit, "table": render_table}
