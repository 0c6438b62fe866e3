#!/usr/bin/env python3
"""Counts Swift source lines longer than the formatter's limit (.swift-format, 120 columns) and
fails if there are more than the recorded ceiling: long lines may be shortened, never added.

    python3 cluster/long-lines.py            # check (run by cluster/test.sh)
    python3 cluster/long-lines.py --list     # show them
Lower CEILING when you shorten lines. Generated code (*.pb.swift) is not counted."""
import json, pathlib, sys

CEILING = 334  # the count when this check was added (388 before the JobCore move); lower it as lines are shortened
root = pathlib.Path(__file__).resolve().parent.parent
limit = json.loads((root / ".swift-format").read_text())["lineLength"]
long = []
for d in ("Sources", "Tests"):
    for p in sorted((root / d).rglob("*.swift")):
        if p.name.endswith(".pb.swift"):
            continue
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if len(line) > limit:
                long.append(f"{p.relative_to(root)}:{i}: {len(line)} columns")
if "--list" in sys.argv:
    print("\n".join(long))
print(f"{len(long)} Swift lines over {limit} columns (ceiling {CEILING})")
if len(long) > CEILING:
    print("long-lines: more lines over the limit than before; shorten the new ones (swift format -i FILE helps)", file=sys.stderr)
    sys.exit(1)
