"""docs/FAULTS.md stays true: each fault class has its section and a test that proves it;
every test it cites exists; every metric it names is served, and every event, field and
value it names is in the code; bench/faults.py measures every fault of its table."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "FAULTS.md"
FAULT_CLASSES = [  # the sections, in order
    "Import error at boot",
    "Exception in a sync path",
    "Exception in a platform task",
    "Blocked event loop",
    "SIGSTOP",
    "SIGKILL",
    "OOM kill",
    "Segfault",
    "Protocol mismatch",
    "Oversized message",
    "Crash-looping account",
    "Platform that cannot load",
    "Account without progress",
    "Store that cannot commit",
    "Full disk",
    "Memory limit",
    "Poison account",
]
CHECKED_ROWS = ("master.log", "status", "metric", "health")
PLACEHOLDER = re.compile(r"<\w+>|…|\bN\b|\bM\b")
CITED = re.compile(r"tests/(\w+\.py)(?:::(\w+))?")


def sections() -> dict[str, str]:
    parts = DOC.read_text().split("\n## ")[1:]
    return {part.split("\n", 1)[0]: part for part in parts}


def table_rows(section: str) -> dict[str, str]:
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) >= 2 and cells[0] not in ("where", "---"):
            rows[cells[0]] = " | ".join(cells[1:])
    return rows


def test_every_fault_class_has_a_section_with_a_test() -> None:
    found = sections()
    assert [name for name in found if name != "How soon"] == FAULT_CLASSES
    for name in FAULT_CLASSES:
        rows = table_rows(found[name])
        assert set(CHECKED_ROWS) <= set(rows), name
        assert CITED.search(rows["proved by"]), f"{name}: no test proves it"


def test_every_cited_test_exists() -> None:
    cited = CITED.findall(DOC.read_text())
    assert len(cited) > 20
    for file, name in cited:
        path = REPO / "tests" / file
        assert path.exists(), f"tests/{file} does not exist"
        if name:
            tree = ast.parse(path.read_text())
            functions = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert name in functions, f"tests/{file}::{name} does not exist"


def test_what_the_rows_name_is_in_the_code() -> None:
    source = "\n".join(p.read_text() for p in sorted((REPO / "hiscrm").rglob("*.py")))
    source = re.sub(r'"\s*\n\s*"', "", source)  # a message cut into adjacent literals
    metrics = (REPO / "hiscrm" / "master" / "api" / "metrics.py").read_text()
    missing = []
    for fault, section in sections().items():
        for where, text in table_rows(section).items():
            if where not in CHECKED_ROWS:
                continue
            for token in re.findall(r"`([^`]+)`", text):
                if PLACEHOLDER.search(token) or token.startswith(("GET ", "hiscrmctl ")):
                    continue
                name, _, labels = token.partition("{")
                if name.startswith("hiscrm_"):
                    if f'"{name}"' not in metrics:
                        missing.append(f"{fault}: metric {name}")
                    values = re.findall(r'="([^"]+)"', labels)
                    missing += [f"{fault}: label value {v}" for v in values if v not in source]
                    continue
                missing += [f"{fault}: {part!r}" for part in name.split(".") if part not in source]
    assert not missing, missing


def test_the_bench_measures_every_fault_of_the_table() -> None:
    summary = sections()["How soon"]
    in_table = re.findall(r"^\| \[([^\]]+)\]\(#([\w-]+)\)", summary, re.MULTILINE)
    anchors = {name.lower().replace(" ", "-") for name in FAULT_CLASSES}
    assert {anchor for _, anchor in in_table} == anchors
    bench = (REPO / "bench" / "faults.py").read_text()
    benched = re.findall(r'Case\(\s*"([^"]+)"', bench)
    assert sorted(benched) == sorted(name for name, _ in in_table)
