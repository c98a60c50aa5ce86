"""The reliability table is generated from the fault suite: each fault test records what it tried and what the
user got (the message it observed, paths made generic), and ``pytest -m faults --write-reliability`` writes
``docs/reliability.md`` and the README's section between ``<!-- reliability:start -->`` and
``<!-- reliability:end -->``, only when every fault test passed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lightning_cnn.atomic import write_text

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- reliability:start -->", "<!-- reliability:end -->"
_RECORDS: dict[str, tuple[str, str, str]] = {}  # test id -> (area, what was tried, what the user gets)
_FAILED: list[str] = []


def pytest_addoption(parser):
    parser.addoption("--write-reliability", action="store_true",
                     help="after the fault suite passes, write docs/reliability.md and the README's section")


@pytest.fixture
def reliability(request, tmp_path):
    """``reliability(area, tried, got)``: ``got`` is what the test observed; tmp paths become generic."""
    def record(area: str, tried: str, got: str) -> None:
        got = " ".join(got.split()).replace(str(tmp_path), "DIR").replace(str(REPO), ".")
        got = re.sub(r"pid \d+, started [\d: -]+", "pid N, started ...", got)
        got = re.sub(r"/\S*?/pytest-\d+/[^/\s]+", "DIR", got)  # module-scoped fixtures' folders too
        _RECORDS[request.node.nodeid] = (area, tried, got)
    return record


def pytest_runtest_logreport(report):
    if report.failed and "test_faults" in report.nodeid:
        _FAILED.append(report.nodeid)


def _outcome(got: str) -> str:
    """What the user gets, in a few words, for the README's grouped table."""
    if got.startswith("error:"):
        return "one `error:` line; exit 2"
    if got.startswith("interrupted:"):
        return "one `interrupted:` line naming the checkpoint to resume; exit 130"
    if got.startswith("terminated:"):
        return "one `terminated:` line naming the checkpoint to resume; exit 143"
    return got if len(got) <= 100 else got[:100].rsplit(" ", 1)[0] + " …"


def render(compact: bool = False) -> str:
    """The full table (docs), or for the README the cases grouped by area and outcome, with a link."""
    rows = sorted(_RECORDS.items(), key=lambda item: (item[1][0], item[0]))
    if not compact:
        lines = ["| Area | What was tried | What the user gets | Test |", "|---|---|---|---|"]
        for nodeid, (area, tried, got) in rows:
            lines.append(f"| {area} | {tried} | {got.replace('|', '/')} | `{nodeid.split('::', 1)[1]}` |")
        return "\n".join(lines) + "\n"
    groups: dict[tuple[str, str], list[str]] = {}
    for _, (area, tried, got) in rows:
        groups.setdefault((area, _outcome(got.replace("|", "/"))), []).append(tried)
    lines = ["| Area | What was tried | What the user gets |", "|---|---|---|"]
    lines += [f"| {area} | {'; '.join(tried)} | {outcome} |" for (area, outcome), tried in groups.items()]
    lines.append("\nThe full messages and the test behind each case: [docs/reliability.md](docs/reliability.md).")
    return "\n".join(lines) + "\n"


def pytest_sessionfinish(session, exitstatus):
    if not session.config.getoption("--write-reliability") or not _RECORDS:
        return
    if _FAILED or exitstatus != 0:
        print(f"\nreliability table not written: {len(_FAILED) or 'some'} test(s) failed")
        return
    table = render()
    doc = REPO / "docs" / "reliability.md"
    text = doc.read_text() if doc.exists() else ""
    if START not in text:
        raise SystemExit(f"{doc} lacks the {START} / {END} markers")
    write_text(doc, _between_markers(text, table))
    readme = REPO / "README.md"
    if START in readme.read_text():
        write_text(readme, _between_markers(readme.read_text(), render(compact=True)))
    print(f"\nreliability table: {len(_RECORDS)} cases written to {doc}"
          + (" and README.md" if START in readme.read_text() else ""))


def _between_markers(text: str, table: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}{END}{tail}"
