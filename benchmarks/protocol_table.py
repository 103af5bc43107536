"""One table from the protocol runs of several data sets: `python benchmarks/protocol_table.py ROOT [ROOT_B]`.

`--wins ROOT` prints only the win counts over all sets (README's table). `--update FILE NAME ROOT [ROOT_B]` writes the tables into FILE between the lines `<!-- NAME:start -->` and
`<!-- NAME:end -->` (BENCHMARKS.md), so the recorded tables are always the ones the result files give.
`--rebuild FILE` refills every block that benchmarks/results/blocks.yaml lists for FILE (BENCHMARKS.md, README.md) from the result files committed
under benchmarks/results; `--check FILE` changes nothing and exits 1 naming the blocks a rebuild would change (and
any block of FILE that blocks.yaml does not list).

ROOT holds one folder per data set, each written by `sctrace protocol` (benchmarks/protocol_devsets.sh makes
them). Prints, per data set, sctrace's EMD and Pearson-delta on every split beside the other methods', the snap
check, and the win counts over all sets. With ROOT_B (e.g. the same protocol after a change to sctrace), its
sctrace rows are shown as a second model, "sctrace (B)", against the same peers.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sctrace.harness.protocol import win_table  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def load(root: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(root.glob("*/protocol.json"))}


def fmt(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(roots: list[str]) -> str:
    """What `protocol_table.py ROOT [ROOT_B]` prints."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        main(["protocol_table.py", *roots])
    return buffer.getvalue()


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def fill(text: str, name: str, content: str, target: Path) -> str:
    """``text`` with the lines between block NAME's markers replaced by ``content``."""
    start, end = markers(name)
    if start not in text or end not in text:
        raise SystemExit(f"{target} has no {start} ... {end} block to fill")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + start + "\n" + content + end + tail


def rebuild(target: Path, results: Path = RESULTS) -> tuple[str, list[str]]:
    """FILE's text with every block results/blocks.yaml lists refilled from results/ROOT/*/protocol.json, and
    the blocks that are stale: those the refill changed, and those of FILE that blocks.yaml does not list."""
    blocks = yaml.safe_load((results / "blocks.yaml").read_text()).get(target.name, {})
    text = target.read_text()
    stale = [name for name in re.findall(r"^<!-- (\S+):start -->$", text, flags=re.M) if name not in blocks]
    for name, roots in blocks.items():
        folders = [root for root in roots if not root.startswith("--")]  # e.g. --wins: README's count only
        if missing := [root for root in folders if not any((results / root).glob("*/protocol.json"))]:
            raise SystemExit(f"{results / 'blocks.yaml'}: {name}'s {', '.join(missing)} holds no SET/protocol.json")
        arguments = [root if root.startswith("--") else str(results / root) for root in roots]
        refilled = fill(text, name, table(arguments), target)
        if refilled != text:
            stale.append(name)
        text = refilled
    return text, stale


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[1] in ("--rebuild", "--check"):
        target = Path(argv[2])
        text, stale = rebuild(target)
        if argv[1] == "--check":
            if stale:
                raise SystemExit(f"{target}: stale blocks (`protocol_table.py --rebuild {target}` refills them; "
                                 f"a block not in blocks.yaml needs its result files): {', '.join(stale)}")
            print(f"{target}: every block is what benchmarks/results gives")
            return
        target.write_text(text)
        print(f"rebuilt {target}" + (f" (changed: {', '.join(stale)})" if stale else " (no change)"))
        return
    if len(argv) > 4 and argv[1] == "--update":
        target, name = Path(argv[2]), argv[3]
        target.write_text(fill(target.read_text(), name, table(argv[4:]), target))
        print(f"updated {target}")
        return
    wins_only = len(argv) > 1 and argv[1] == "--wins"
    if wins_only:
        argv = [argv[0], *argv[2:]]
    first = load(Path(argv[1]))
    second = load(Path(argv[2])) if len(argv) > 2 else {}
    all_rows = []
    for name, summary in first.items():
        rows = [r for r in summary["rows"] if not r.get("failed")]
        if name in second:
            rows += [{**r, "method": "sctrace (B)"} for r in second[name]["rows"] if r["method"] == "sctrace" and not r.get("failed")]
        all_rows += [{**r, "split": f"{name}:{r['split']}"} for r in rows]
        if wins_only:
            continue
        methods = list(dict.fromkeys(r["method"] for r in rows))
        print(f"\n### {name} ({summary['count_kind']}; seeds {', '.join(map(str, summary['seeds']))})\n")
        print("| split | " + " | ".join(f"{m} EMD / PD" for m in methods) + " |")
        print("|---|" + "---|" * len(methods))
        for split in summary["splits"]:
            by = {r["method"]: r for r in rows if r["split"] == split}
            cells = []
            for m in methods:
                r = by.get(m)
                if r is None:
                    cells.append("-")
                    continue
                snap = r.get("snap")
                mark = "" if snap is None or snap["snapped_seeds"] == 0 else " (s)"
                cells.append(f"{fmt(r['emd'])} / {fmt(r['pearson_delta'])}{mark}")
            print(f"| {split} | " + " | ".join(cells) + " |")
    if wins_only:
        done = {n: len({r["split"] for r in first[n]["rows"] if not r.get("failed")}) for n in first}
        sets = ", ".join(f"{n} ({done[n]} of {len(first[n]['splits'])} splits run)" for n in first)
        print(f"Sets: {sets}.")
    else:
        print("\n(s): the prediction's mean lies nearer a training time's mean than the truth's (snap check).\n")
    for model in ("sctrace", "sctrace (B)") if second else ("sctrace",):
        wins = win_table([r for r in all_rows if r["method"] != ("sctrace (B)" if model == "sctrace" else "sctrace")], model)
        print(f"\n{model} wins over all splits:\n\n| method | EMD | Pearson-delta |\n|---|---|---|")
        for method, entry in wins.items():
            print(f"| {method} | {entry['emd']}/{entry['emd_n']} | {entry['pearson_delta']}/{entry['pearson_delta_n']} |")


if __name__ == "__main__":
    main(sys.argv)
