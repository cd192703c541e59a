#!/usr/bin/env python3
"""callgrind_allocs.py FILE: how many times the program called the C allocator
(malloc, calloc, realloc, posix_memalign, aligned_alloc), from a callgrind output
file: the sum of the `calls=` counts of every call site whose callee is one of them.
Used by benches/instructions.sh for allocations per request (the difference between
a run with N requests and one with none, divided by N)."""
import re, sys

ALLOC = {"malloc", "calloc", "realloc", "posix_memalign", "aligned_alloc",
         # mimalloc (the proxy's global allocator): what Rust's allocator calls
         "mi_malloc_aligned", "mi_zalloc_aligned", "mi_realloc_aligned"}
names = {}
total = 0
callee = None
for line in open(sys.argv[1], errors="replace"):
    if line.startswith("cfn="):
        m = re.match(r"cfn=\((\d+)\)(?: (.*))?", line.strip())
        if m:
            if m.group(2):
                names[m.group(1)] = m.group(2)
            callee = names.get(m.group(1), "")
        else:
            callee = line[4:].strip()
    elif line.startswith("fn="):
        m = re.match(r"fn=\((\d+)\)(?: (.*))?", line.strip())
        if m and m.group(2):
            names[m.group(1)] = m.group(2)
        callee = None
    elif line.startswith("calls=") and callee is not None:
        if callee.split("'")[0] in ALLOC:
            total += int(line[6:].split()[0])
        callee = None
print(total)
