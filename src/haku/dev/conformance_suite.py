"""The conformance suite as data: which specs run, in which chunks, and what their results say.

Pure functions for :mod:`haku.dev.conformance_run` (which runs ``e2e.test``):

- :func:`parse_spec_list` reads ``e2e.test --list-tests`` and :func:`conformance_specs` keeps
  the ``[Conformance]`` specs that are neither ``[Serial]`` nor ``[Disruptive]`` (what
  upstream's conformance run in parallel covers; 433 at v1.37.2);
- :func:`split` deals them into chunks and :func:`focus` writes the ``--ginkgo.focus`` that
  selects exactly a chunk's specs (each name anchored and quoted for Go's RE2);
- :func:`parse_junit` reads the JUnit report ginkgo writes per chunk,
  :func:`summarize` counts results per SIG and names each failure with its reason, marking
  the ones docs/conformance.md explains (:data:`KNOWN_GAPS`), and :func:`merged_junit`
  writes one JUnit file of all chunks.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

CONFORMANCE = "[Conformance]"
LEFT_OUT = ("[Serial]", "[Disruptive]")

# A spec line of `e2e.test --list-tests`: four spaces, the file and line, then the full name.
_SPEC_LINE = re.compile(r"^\s+(?P<location>\S+:\d+): (?P<name>\[.*)$")
_SIG = re.compile(r"^\[(sig-[a-z0-9-]+)\]")
# What RE2 (Go's regexp) treats as special; everything else stands for itself.
_RE2_SPECIAL = frozenset("\\.+*?()|[]{}^$")


@dataclass(frozen=True)
class Spec:
    name: str
    location: str = ""

    @property
    def sig(self) -> str:
        return sig_of(self.name)


def sig_of(name: str) -> str:
    """``sig-network`` for ``[sig-network] DNS should …``; ``other`` without a SIG."""
    match = _SIG.match(name)
    return match.group(1) if match else "other"


def parse_spec_list(text: str) -> list[Spec]:
    """Every spec ``e2e.test --list-tests`` prints, in its order (sorted by name)."""
    specs = []
    for line in text.splitlines():
        match = _SPEC_LINE.match(line)
        if match:
            specs.append(Spec(match["name"], match["location"]))
    return specs


def conformance_specs(specs: Iterable[Spec], left_out: Sequence[str] = LEFT_OUT) -> list[Spec]:
    """The ``[Conformance]`` specs without any tag of ``left_out``, one per name."""
    seen: dict[str, Spec] = {}
    for spec in specs:
        if CONFORMANCE in spec.name and not any(tag in spec.name for tag in left_out):
            seen.setdefault(spec.name, spec)
    return sorted(seen.values(), key=lambda s: s.name)


def select(specs: Sequence[Spec], patterns: Sequence[str]) -> list[Spec]:
    """The specs whose name matches one of ``patterns`` (Python regular expressions, searched
    anywhere in the name); every pattern must match at least one spec, or ValueError names
    those that match none (a subset that silently shrank would prove nothing)."""
    try:
        compiled = [re.compile(p) for p in patterns]
    except re.error as e:
        raise ValueError(f"not a regular expression: {e.pattern!r}: {e}") from e
    unmatched = [p.pattern for p in compiled if not any(p.search(s.name) for s in specs)]
    if unmatched:
        raise ValueError(f"no spec matches {unmatched}")
    return [s for s in specs if any(p.search(s.name) for p in compiled)]


def split(specs: Sequence[Spec], chunks: int) -> list[list[Spec]]:
    """``specs`` dealt round-robin into at most ``chunks`` non-empty chunks: neighbours in
    name order (the same Describe, often equally slow) land in different chunks."""
    if chunks < 1:
        raise ValueError("chunks must be at least 1")
    out: list[list[Spec]] = [[] for _ in range(min(chunks, len(specs)))]
    for i, spec in enumerate(specs):
        out[i % len(out)].append(spec)
    return out


def re2_quote(text: str) -> str:
    return "".join("\\" + c if c in _RE2_SPECIAL else c for c in text)


# The description e2e.test gives its suite: ginkgo matches a focus against it, a space and the
# spec's full name (the name ``--list-tests`` prints).
SUITE = "Kubernetes e2e suite"


def focus(specs: Iterable[Spec]) -> str:
    """A ``--ginkgo.focus`` matching exactly these specs' full names."""
    return f"^{re2_quote(SUITE)} (?:" + "|".join(re2_quote(s.name) for s in specs) + ")$"


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Result:
    name: str
    state: str  # passed, failed, skipped, or ginkgo's other states (panicked, timedout, …)
    seconds: float = 0.0
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.state not in ("passed", "skipped", "pending")


def _case_name(raw: str) -> str:
    # ginkgo prefixes the node type: "[It] [sig-apps] …"; suite nodes keep their name.
    return raw[5:] if raw.startswith("[It] ") else raw


def parse_junit(xml_text: str) -> list[Result]:
    """The test cases of a ginkgo JUnit report (``--ginkgo.junit-report``), suite nodes such
    as ``[SynchronizedBeforeSuite]`` included: their failure fails the whole chunk."""
    root = ET.fromstring(xml_text)  # noqa: S314 - ginkgo's report on this machine
    results = []
    for case in root.iter("testcase"):
        name = _case_name(case.get("name", ""))
        status = case.get("status") or ""
        failure = case.find("failure")
        error = case.find("error")
        skipped = case.find("skipped")
        if not status:
            status = ("failed" if failure is not None or error is not None
                      else "skipped" if skipped is not None else "passed")
        node = failure if failure is not None else error
        message = ""
        if node is not None:
            message = (node.get("message") or node.text or "").strip()
        results.append(Result(name, status, float(case.get("time") or 0.0), message))
    return results


@dataclass(frozen=True)
class Gap:
    """A failure whose cause lies outside Haku, explained in docs/conformance.md ("Known
    gaps"): regular expressions on the spec's name and, if given, on its failure message
    (only that failure of the spec is explained), and the reason the summary prints."""

    spec: str
    reason: str
    message: str = ""

    def explains(self, name: str, message: str = "") -> bool:
        return bool(re.search(self.spec, name)) and (
            not self.message or bool(re.search(self.message, message)))


KNOWN_GAPS: tuple[Gap, ...] = (
    Gap(r"ImageVolume",
        "image volumes need containerd 2.1 or later; the dev cluster has Debian's 1.6"),
    # The e2e helpers give a deleted CRD 30 s to leave discovery (fixtures.
    # DeleteV1CustomResourceDefinition), and about 20 specs delete one.
    Gap(r"^\[sig-api-machinery\]",
        "kube-apiserver's CRD finalizer can drop its retry after a 429 from the new "
        "resource's watch cache and leave the CRD until its informer's 5-minute resync; "
        "kine's slower watch makes it frequent (bench/crd_deletion.py)",
        message=r"(deleting CustomResourceDefinition|failed to delete "
                r"CustomResourceDefinition[^:]*): context deadline exceeded"),
)


def known_gap(name: str, message: str = "", gaps: Sequence[Gap] | None = None) -> str | None:
    """The reason of the first gap (of ``gaps``, by default :data:`KNOWN_GAPS`) that
    explains spec ``name`` failing with ``message``."""
    for gap in KNOWN_GAPS if gaps is None else gaps:
        if gap.explains(name, message):
            return gap.reason
    return None


@dataclass
class SigCount:
    passed: int = 0
    failed: int = 0
    skipped: int = 0


@dataclass
class Summary:
    expected: int
    by_sig: dict[str, SigCount] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # expected specs e2e.test skipped

    @property
    def passed(self) -> int:
        return sum(c.passed for c in self.by_sig.values())

    @property
    def failed(self) -> int:
        return sum(c.failed for c in self.by_sig.values())

    @property
    def unexplained(self) -> list[dict[str, Any]]:
        """Failures no known gap explains, specs skipped, and specs that never reported: a
        conformance spec that did not run proves nothing."""
        return [f for f in self.failures if not f["known"]] + [
            {"name": n, "reason": "skipped by e2e.test", "known": None}
            for n in self.skipped] + [
            {"name": n, "reason": "never reported (its chunk timed out or crashed)",
             "known": None} for n in self.not_run]

    def to_dict(self) -> dict[str, Any]:
        return {"expected": self.expected, "passed": self.passed, "failed": self.failed,
                "skipped": self.skipped, "not_run": self.not_run,
                "by_sig": {s: vars(c) for s, c in sorted(self.by_sig.items())},
                "failures": self.failures}


def first_line(message: str, limit: int = 300) -> str:
    """The part of a failure message that says what went wrong: its lines up to ginkgo's
    ``In [It] at: file:line`` (a Gomega message spans several: ``Expected <int>: 440 to be
    == <int>: 400``), joined, shortened."""
    words: list[str] = []
    for line in message.splitlines():
        line = line.strip()
        if line.startswith("In [") and words:
            break
        words += line.split()
        if len(" ".join(words)) > limit:
            break
    text = " ".join(words)
    if not text:
        return "(no message)"
    return text if len(text) <= limit else text[:limit - 1] + "…"


def summarize(expected: Sequence[Spec], results: Iterable[Result],
              gaps: Sequence[Gap] | None = None) -> Summary:
    """Per SIG, how the ``expected`` specs ended; every failure with its reason and whether a
    known gap explains it; suite-node failures (a chunk's BeforeSuite) count as failures of
    SIG ``suite``; expected specs without a result are ``not_run``."""
    summary = Summary(expected=len(expected))
    reported: set[str] = set()
    wanted = {s.name for s in expected}
    for r in results:
        if r.name not in wanted:
            if not r.failed:
                continue  # suite nodes that passed, specs another chunk's focus left out
            sig = "suite"
        else:
            sig = sig_of(r.name)
            reported.add(r.name)
        count = summary.by_sig.setdefault(sig, SigCount())
        if r.state in ("skipped", "pending"):
            count.skipped += 1
            summary.skipped.append(r.name)
        elif r.failed:
            count.failed += 1
            reason = known_gap(r.name, r.message, gaps)
            summary.failures.append({"name": r.name, "state": r.state,
                                     "reason": first_line(r.message),
                                     "known": reason})
        else:
            count.passed += 1
    summary.not_run = sorted(wanted - reported)
    return summary


def render_summary(summary: Summary) -> str:
    """The summary as Markdown: a table per SIG, then each failure with its reason."""
    lines = ["| SIG | passed | failed | skipped |", "|---|---:|---:|---:|"]
    for sig, c in sorted(summary.by_sig.items()):
        lines.append(f"| {sig} | {c.passed} | {c.failed} | {c.skipped} |")
    lines.append(f"| **all** | **{summary.passed}** | **{summary.failed}** | "
                 f"**{sum(c.skipped for c in summary.by_sig.values())}** |")
    lines.append("")
    lines.append(f"{summary.passed} of {summary.expected} specs passed, {summary.failed} failed"
                 + (f", {len(summary.skipped)} skipped" if summary.skipped else "")
                 + (f", {len(summary.not_run)} never reported" if summary.not_run else "")
                 + ".")
    if summary.failures:
        lines += ["", "Failures:", ""]
        for f in summary.failures:
            why = f"known: {f['known']}" if f["known"] else "not explained"
            lines.append(f"- `{f['name']}` ({f['state']}; {why}): {f['reason']}")
    if summary.skipped:
        lines += ["", "Skipped by e2e.test:", ""] + [f"- `{n}`" for n in summary.skipped]
    if summary.not_run:
        lines += ["", "Never reported:", ""] + [f"- `{n}`" for n in summary.not_run]
    return "\n".join(lines) + "\n"


def merged_junit(results: Sequence[Result], name: str = "Kubernetes e2e suite") -> str:
    """One JUnit document of every chunk's results (suite nodes that passed left out)."""
    suite = ET.Element("testsuite", {
        "name": name, "tests": str(len(results)),
        "failures": str(sum(r.failed for r in results)),
        "skipped": str(sum(r.state in ("skipped", "pending") for r in results)),
        "time": f"{sum(r.seconds for r in results):.3f}"})
    for r in results:
        case = ET.SubElement(suite, "testcase", {"name": r.name, "classname": name,
                                                 "status": r.state, "time": f"{r.seconds:.3f}"})
        if r.failed:
            ET.SubElement(case, "failure", {"message": first_line(r.message),
                                            "type": r.state}).text = r.message
        elif r.state in ("skipped", "pending"):
            ET.SubElement(case, "skipped")
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def count_states(results: Iterable[Result]) -> Counter[str]:
    return Counter(r.state for r in results)
