"""``python -m policies.audit``: the pack's rules over manifests, a stack export or a cluster.

    python -m policies.audit deploy/                       # a directory of Kubernetes YAML
    python -m policies.audit stack.json --stack prod       # `pulumi stack export` output
    python -m policies.audit --kubeconfig ~/.kube/config   # a live cluster
    python -m policies.audit deploy/ --format sarif -o audit.sarif --fail-on high

Exit status: 0 no violation at or above --fail-on, 1 violations at or above it, 2 usage or
input error (a missing file, malformed YAML, an unusable kubeconfig), explained on stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from policies.engine import PolicyConfigError, evaluate, load_settings, stack_settings
from policies.resource import Resource
from policies.rules import SEVERITIES, Rule, all_rules
from policies.sources import YAML_SUFFIXES, InputProblem, manifests_from_paths, stack_export_from_file

FORMATS = ("table", "json", "sarif", "junit")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m policies.audit",
        description=(
            "Audit Kubernetes YAML, a `pulumi stack export` file or a live cluster against the edge fleet's policy "
            "rules."
        ),
        epilog="Exit status: 0 clean, 1 violations at or above --fail-on, 2 usage or input error.",
    )
    p.add_argument(
        "sources",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="YAML files or directories (searched recursively), or `pulumi stack export` JSON files",
    )
    p.add_argument("--kubeconfig", type=Path, help="audit the live cluster of this kubeconfig")
    p.add_argument("--context", help="kubeconfig context (default: current-context)")
    p.add_argument(
        "--include-system",
        action="store_true",
        help="live cluster: also audit kube-system, kube-public, kube-node-lease and built-in objects",
    )
    p.add_argument("--format", choices=FORMATS, default="table", help="report format (default: table)")
    p.add_argument("-o", "--output", type=Path, help="write the report to this file instead of stdout")
    p.add_argument(
        "--fail-on",
        choices=(*SEVERITIES, "none"),
        default="low",
        help="lowest severity that makes the exit status 1 (default: low; none: never)",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument("--stack", help="enforcement levels and rule settings of policies/config/STACK.json")
    group.add_argument("--config", type=Path, help="a policy pack config file (the --policy-pack-config format)")
    p.add_argument(
        "--today",
        type=dt.date.fromisoformat,
        metavar="YYYY-MM-DD",
        help="date that exemption expiry is judged against (default: today)",
    )
    return p


def _read(args: argparse.Namespace) -> tuple[list[Resource], list[InputProblem]]:
    resources: list[Resource] = []
    problems: list[InputProblem] = []
    yaml_paths = []
    for src in args.sources:
        if not src.exists():
            problems.append(InputProblem(str(src), 0, "does not exist"))
        elif src.is_file() and src.suffix == ".json":
            res, probs = stack_export_from_file(src)
            resources += res
            problems += probs
        elif src.is_dir() or src.suffix in YAML_SUFFIXES:
            yaml_paths.append(src)
        else:
            problems.append(
                InputProblem(str(src), 0, "is neither YAML (.yaml/.yml), a directory nor a stack export (.json)")
            )
    if yaml_paths:
        res, probs = manifests_from_paths(yaml_paths)
        resources += res
        problems += probs
    if args.kubeconfig is not None:
        from policies.audit.live import list_cluster

        res, probs = list_cluster(args.kubeconfig, args.context, args.include_system)
        resources += res
        problems += probs
    return resources, problems


def _note_unchecked(resources: list[Resource], rules: list[Rule]) -> list[InputProblem]:
    """One note per file for the kinds no rule reads by name and that hold no pod spec (only
    their exemption annotations are checked; they are skipped, not an error)."""
    from policies.rules._k8s import pod_specs

    known = set().union(*(r.targets for r in rules))
    unchecked: dict[str, set[str]] = {}
    for res in resources:
        if res.key not in known and not res.type.startswith("pulumi:") and not pod_specs(res):
            file = res.source.rsplit(":", 1)[0] if res.source.rsplit(":", 1)[-1].isdigit() else res.source
            unchecked.setdefault(file, set()).add(res.type.replace("kubernetes:", ""))
    return [
        InputProblem(f, 0, f"no rule checks {', '.join(sorted(kinds))}; skipped", fatal=False)
        for f, kinds in sorted(unchecked.items())
        if f.endswith(YAML_SUFFIXES)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.sources and args.kubeconfig is None:
        parser.print_usage(sys.stderr)
        print("python -m policies.audit: error: give a PATH or --kubeconfig", file=sys.stderr)
        return 2
    rules = all_rules()
    try:
        settings = stack_settings(args.stack) if args.stack else load_settings(args.config, rules)
    except PolicyConfigError as e:
        print(f"python -m policies.audit: {e}", file=sys.stderr)
        return 2
    resources, problems = _read(args)
    problems += _note_unchecked(resources, rules)
    report = evaluate(resources, settings, today=args.today, rules=rules)

    from policies.audit.formats import RENDERERS, render_table

    render = RENDERERS[args.format]
    try:
        if args.output is not None:
            with args.output.open("w") as out:
                text = (
                    render_table(report, problems, rules, args.fail_on, stream=out)
                    if render is render_table
                    else render(report, problems, rules, args.fail_on)
                )
                out.write(text)
        else:
            text = render(report, problems, rules, args.fail_on)
            sys.stdout.write(text)
    except OSError as e:
        print(f"python -m policies.audit: cannot write {args.output}: {e.strerror}", file=sys.stderr)
        return 2
    for p in problems:
        print(f"{'error' if p.fatal else 'note'}: {p}", file=sys.stderr)
    if any(p.fatal for p in problems):
        return 2
    if args.fail_on != "none" and report.failing(args.fail_on):
        return 1
    return 0
