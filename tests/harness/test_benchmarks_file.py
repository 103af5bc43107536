"""BENCHMARKS.md's generated blocks are what the committed result files give (issue 23).

`benchmarks/protocol_table.py --check` rebuilds every block benchmarks/results/blocks.yaml lists from
benchmarks/results/ROOT/SET/protocol.json and fails naming the blocks that differ; no data set or run is needed.
"""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def protocol_table():
    spec = importlib.util.spec_from_file_location("protocol_table", ROOT / "benchmarks" / "protocol_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["BENCHMARKS.md", "README.md"])
def test_the_documents_are_what_the_result_files_give(protocol_table, capsys, name):
    protocol_table.main(["protocol_table.py", "--check", str(ROOT / name)])
    assert "every block is what benchmarks/results gives" in capsys.readouterr().out


def test_an_altered_number_is_named_and_rebuilt(protocol_table, tmp_path):
    original = (ROOT / "BENCHMARKS.md").read_text()
    start, end = "<!-- protocol-rel:start -->", "<!-- protocol-rel:end -->"
    head, rest = original.split(start, 1)
    block, tail = rest.split(end, 1)
    number = re.search(r"\d\.\d{3}", block)
    altered = block[: number.start()] + f"{float(number.group()) + 0.001:.3f}" + block[number.end():]
    copy = tmp_path / "BENCHMARKS.md"
    copy.write_text(head + start + altered + end + tail)
    with pytest.raises(SystemExit, match="stale blocks") as stopped:
        protocol_table.main(["protocol_table.py", "--check", str(copy)])
    assert str(stopped.value).endswith(": protocol-rel")
    protocol_table.main(["protocol_table.py", "--rebuild", str(copy)])
    assert copy.read_text() == original


def test_a_block_without_result_files_is_stale(protocol_table, tmp_path):
    copy = tmp_path / "BENCHMARKS.md"
    copy.write_text((ROOT / "BENCHMARKS.md").read_text() + "\n<!-- protocol-new:start -->\n| a |\n<!-- protocol-new:end -->\n")
    with pytest.raises(SystemExit, match="protocol-new"):
        protocol_table.main(["protocol_table.py", "--check", str(copy)])
