#!/usr/bin/env python3
"""Keep src/ easy to work in: no file over 700 lines, no function over 90.

Counts by brace matching on the text (strings and comments stripped), which
is exact enough for rustfmt-formatted code. Exits 1 naming each offender.
"""
import os
import re
import sys

MAX_FILE, MAX_FN = 700, 90
FN = re.compile(r"\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")


def code_of(line):
    line = re.sub(r'"([^"\\]|\\.)*"', '""', line)
    line = re.sub(r"'([^'\\]|\\.)'", "''", line)
    return line.split("//")[0]


def fn_length(lines, i):
    depth, started = 0, False
    for j in range(i, len(lines)):
        code = code_of(lines[j])
        for ch in code:
            if ch == "{":
                depth, started = depth + 1, True
            elif ch == "}":
                depth -= 1
        if started and depth <= 0:
            return j - i + 1
        if not started and code.rstrip().endswith(";"):
            return 0
    return len(lines) - i


def main(root="src"):
    bad = []
    for d, _, files in os.walk(root):
        for f in sorted(files):
            if not f.endswith(".rs"):
                continue
            path = os.path.join(d, f)
            lines = open(path, encoding="utf-8").read().split("\n")
            if len(lines) > MAX_FILE:
                bad.append(f"{path}: {len(lines)} lines (limit {MAX_FILE})")
            for i, line in enumerate(lines):
                m = FN.match(line)
                if m and not line.lstrip().startswith("//"):
                    n = fn_length(lines, i)
                    if n > MAX_FN:
                        bad.append(f"{path}:{i + 1}: fn {m.group(6)} is {n} lines (limit {MAX_FN})")
    for b in bad:
        print(b)
    if bad:
        sys.exit(1)
    print(f"layout ok: no file in {root}/ over {MAX_FILE} lines, no function over {MAX_FN}")


if __name__ == "__main__":
    main(*sys.argv[1:])
