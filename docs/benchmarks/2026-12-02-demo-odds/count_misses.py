"""What the count misses say, by row: (true count, said count) over `owl3 eval synthetic` records.

    python count_misses.py R.jsonl [R2.jsonl ...]"""
import json
import re
import sys
from collections import Counter

NUMBER = re.compile(r"\b(no|one|two|three|four|five|six)\b")
misses = Counter()
for path in sys.argv[1:]:
    for line in open(path):
        r = json.loads(line)
        if r["kind"].startswith("count") and not r["correct"]:
            said, true = NUMBER.search(r["prediction"].lower()), NUMBER.search(r["answer"].lower())
            misses[(r["group"], true and true.group(1), said and said.group(1))] += 1
for group in sorted({g for g, _, _ in misses}):
    rows = {k: v for k, v in misses.items() if k[0] == group}
    print(f"row {group}: {sum(rows.values())} count misses; true -> said: "
          + ", ".join(f"{t} -> {s} {n}" for (_, t, s), n in sorted(rows.items(), key=lambda x: -x[1])))
