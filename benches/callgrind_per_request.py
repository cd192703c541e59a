#!/usr/bin/env python3
"""callgrind_per_request.py ZERO MANY N [TOP] [--inclusive]: where a request's
instructions go, by function. ZERO and MANY are callgrind files of the same proxy
serving no request and N requests (`CALLGRIND_KEEP=DIR benches/instructions.sh`);
prints the TOP (default 40) functions by (Ir(MANY) - Ir(ZERO)) / N as a Markdown
table, self cost (default) or inclusive. Uses callgrind_annotate."""
import re, subprocess, sys

args = [a for a in sys.argv[1:] if not a.startswith("--")]
inclusive = "--inclusive" in sys.argv
zero, many, n = args[0], args[1], int(args[2])
top = int(args[3]) if len(args) > 3 else 40


def costs(path):
    out = subprocess.run(
        ["callgrind_annotate", "--threshold=100", f"--inclusive={'yes' if inclusive else 'no'}", path],
        capture_output=True, text=True, check=True).stdout
    table = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+(\S.*)", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        name = m.group(2)
        name = re.sub(r"^[^:]*:", "", name, count=1)  # drop the file
        name = re.sub(r" \[[^\]]*\]$", "", name)  # drop the object
        table[name] = table.get(name, 0) + int(m.group(1).replace(",", ""))
    return table


a, b = costs(zero), costs(many)
rows = sorted(((b.get(k, 0) - a.get(k, 0)) / n, k) for k in set(a) | set(b))
rows.reverse()
total = sum(r for r, _ in rows) if not inclusive else None
print(f"| instructions per request ({'inclusive' if inclusive else 'self'}) | function |")
print("| ---: | --- |")
for per, name in rows[:top]:
    name = name.replace("|", "\\|")
    if len(name) > 150:
        name = name[:147] + "..."
    print(f"| {per:,.0f} | `{name}` |")
if total is not None:
    print(f"| {total:,.0f} | (all functions) |")
