"""Right answers per question kind in one row of `owl3 eval synthetic` records, for several models.

    python docs/benchmarks/2026-12-03-demo-copy/kinds.py ROW NAME=RECORDS.jsonl ...

ROW is the record's group ("1", "8", "video", "which"); one column per model, one line per kind.
"""

import json
import sys
from collections import defaultdict

row, runs = sys.argv[1], [a.split("=", 1) for a in sys.argv[2:]]
table: dict[str, dict[str, list[int]]] = defaultdict(dict)
for name, path in runs:
    with open(path) as f:
        for rec in map(json.loads, f):
            if rec["group"] == row:
                right = table[rec["kind"]].setdefault(name, [0, 0])
                right[0] += rec["correct"]
                right[1] += 1
print(f"row {row} | " + " | ".join(name for name, _ in runs))
for kind in sorted(table):
    print(f"{kind} | " + " | ".join("{}/{}".format(*table[kind].get(name, [0, 0])) for name, _ in runs))
