"""One result root from two: `python benchmarks/protocol_merge.py BASE NEW OUT`.

OUT/SET/protocol.json is BASE/SET/protocol.json with its sctrace rows replaced by NEW/SET's (a protocol run of
sctrace alone after a change, `sctrace protocol --methods sctrace`) and the win table counted again, so that the
other methods' runs are shared and not fitted twice. Sets NEW lacks keep BASE's sctrace rows; a split NEW lacks
keeps BASE's row, and the script names it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sctrace.harness.protocol import win_table  # noqa: E402


def merge(base: Path, new: Path, out: Path) -> list[str]:
    """Write OUT; returns the splits kept from BASE for want of a NEW row."""
    kept = []
    for path in sorted(base.glob("*/protocol.json")):
        summary = json.loads(path.read_text())
        name = path.parent.name
        theirs = new / name / "protocol.json"
        if theirs.exists():
            replacements = {r["split"]: r for r in json.loads(theirs.read_text())["rows"] if r["method"] == "sctrace"}
            rows = []
            for row in summary["rows"]:
                if row["method"] == "sctrace":
                    if row["split"] not in replacements:
                        kept.append(f"{name}:{row['split']}")
                    row = replacements.get(row["split"], row)
                rows.append(row)
            summary["rows"] = rows
            summary["wins"] = win_table(rows)
        target = out / name / "protocol.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(summary, indent=1))
    return kept


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__.splitlines()[1].strip("`"))
    missing = merge(*(Path(a) for a in sys.argv[1:]))
    print("merged" + (f"; kept from BASE for want of a new row: {', '.join(missing)}" if missing else ""))
