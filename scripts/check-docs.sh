#!/usr/bin/env bash
# The documentation stands on its own (.ci/run calls this):
#   - every relative link in a Markdown file resolves to a file or folder of the repository,
#     and a link's #anchor to a heading of the Markdown file it names;
#   - no link leaves the repository (a ../ past its root, an absolute path), and no file
#     mentions the contract's old place outside it (shared/SPEC.md, ../shared, "SPEC §N");
#   - every docs/NAME.md any file mentions exists;
#   - no Markdown file speaks of how warden was made ("this turn", "the first version",
#     "the seed's", "since session N", "since 0.2", "issue 13"): a reader has none of that;
#   - README.md stays under 300 lines.
# Each problem is printed as FILE:LINE: what is wrong; the exit status is 1 when there is one.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 - "$@" <<'PY'
import os, re, subprocess, sys

root = os.path.realpath(".")
problems = []

def report(path, line, message):
    problems.append(f"{path}:{line}: {message}")

def tracked(pattern=None):
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"],
                             capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        out = []
        for d, dirs, files in os.walk("."):
            dirs[:] = [x for x in dirs if x not in (".git", "target", "node_modules")]
            out += [os.path.relpath(os.path.join(d, f)) for f in files]
    files = [f for f in out if f and os.path.isfile(f) and "node_modules/" not in f
             and not f.startswith("target/")]
    if pattern:
        files = [f for f in files if re.search(pattern, f)]
    return sorted(set(files))

def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")

anchor_cache = {}
def anchors(path):
    if path not in anchor_cache:
        seen, out, fence = {}, set(), None
        for line in open(path, encoding="utf-8"):
            m = re.match(r"^\s*(```|~~~)", line)
            if m:
                fence = None if fence == m.group(1) else (fence or m.group(1))
                continue
            if fence:
                continue
            m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
            if m:
                s = slug(m.group(1))
                n = seen.get(s, 0)
                seen[s] = n + 1
                out.add(s if n == 0 else f"{s}-{n}")
            for a in re.findall(r'<a\s+(?:name|id)="([^"]+)"', line):
                out.add(a)
        anchor_cache[path] = out
    return anchor_cache[path]

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")

for md in tracked(r"\.md$"):
    fence = None
    for number, line in enumerate(open(md, encoding="utf-8"), 1):
        m = re.match(r"^\s*(```|~~~)", line)
        if m:
            fence = None if fence == m.group(1) else (fence or m.group(1))
            continue
        if fence:
            continue
        text = re.sub(r"`[^`]*`", "", line)  # code spans are not links
        for target in LINK.findall(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            if path.startswith("/"):
                report(md, number, f"link {target!r} is an absolute path: link relative to {md}")
                continue
            dest = os.path.normpath(os.path.join(os.path.dirname(md), path)) if path else md
            real = os.path.realpath(dest)
            if real != root and not real.startswith(root + os.sep):
                report(md, number, f"link {target!r} leaves the repository")
                continue
            if not os.path.exists(dest):
                report(md, number, f"link {target!r}: {dest} does not exist")
                continue
            if anchor and dest.endswith(".md") and anchor not in anchors(dest):
                report(md, number, f"link {target!r}: {dest} has no heading with the anchor #{anchor}")

HISTORY = re.compile(r"\b(this turn|first turn|first version|the seed's|since session \d+|"
                     r"since \d+\.\d+\b|issue \d+)", re.IGNORECASE)
for md in tracked(r"\.md$"):
    for number, line in enumerate(open(md, encoding="utf-8"), 1):
        m = HISTORY.search(line)
        if m:
            report(md, number, f"{m.group(0)!r} speaks of how warden was made: say what it does now")

own = os.path.join("scripts", "check-docs.sh")
for f in tracked():
    if f == own:
        continue
    try:
        lines = open(f, encoding="utf-8").read().split("\n")
    except (UnicodeDecodeError, OSError):
        continue
    for number, line in enumerate(lines, 1):
        for outside in ("shared/SPEC", "../shared"):
            if outside in line:
                report(f, number, f"mentions {outside!r}, which is not in the repository: point at docs/ instead")
        if re.search(r"\bSPEC\b(?!S)", line):
            report(f, number, "refers to the SPEC, which is not in the repository: "
                              "write docs/contract.md §N (the same numbers) or name a docs/ page")
        for doc in re.findall(r"\bdocs/[A-Za-z0-9_-]+\.md\b", line):
            if not os.path.exists(doc):
                report(f, number, f"mentions {doc}, which does not exist")

with open("README.md", encoding="utf-8") as f:
    count = sum(1 for _ in f)
if count >= 300:
    report("README.md", count, f"README.md has {count} lines: keep it under 300 (move detail into docs/)")

if problems:
    print("\n".join(problems), file=sys.stderr)
    print(f"check-docs: {len(problems)} problem(s)", file=sys.stderr)
    sys.exit(1)
print(f"check-docs: ok ({len(tracked(r'[.]md$'))} Markdown files, README.md {count} lines)")
PY
