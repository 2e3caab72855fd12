#!/usr/bin/env bash
# Check the relative links of README.md and docs/**/*.md: every target file must exist, and
# a `#anchor` on a markdown target must name one of its headings (GitHub's slugs).
# http(s)/mailto links and links that are only `#anchor` are not checked; links inside fenced
# code blocks and inline code are ignored. Prints each broken link and exits 1 if there is one.
# Usage: bash scripts/check-doc-links.sh   (from anywhere; needs python3, standard library only)
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 - "$@" <<'PY'
import os, re, sys
from pathlib import Path

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`+[^`]*`+")
# [text](target "title") and ![alt](target); the text may hold one level of [...]
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFDEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")

def lines_outside_code(path):
    """(number, line) of each line outside fenced code blocks"""
    fenced = False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield n, line

def slug(text):
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading: its text
    text = text.replace("`", "").strip().lower()
    out = "".join(c for c in text if c.isalnum() or c in " -_")
    return out.replace(" ", "-")

_anchors = {}
def anchors(path):
    if path not in _anchors:
        seen, found = {}, set()
        for _, line in lines_outside_code(path):
            m = HEADING.match(line)
            if not m:
                continue
            s = slug(m.group(2))
            k = seen.get(s, 0)
            seen[s] = k + 1
            found.add(s if k == 0 else f"{s}-{k}")
        _anchors[path] = found
    return _anchors[path]

def links(md):
    """(line, target) of every link outside code; a link's text may run over two lines"""
    kept = {n: INLINE_CODE.sub("", line) for n, line in lines_outside_code(md)}
    last = max(kept, default=0)
    text = "\n".join(kept.get(n, "") for n in range(1, last + 1))
    for m in LINK.finditer(text):
        yield text.count("\n", 0, m.start()) + 1, m.group(1)
    for n, line in kept.items():
        m = REFDEF.match(line)
        if m:
            yield n, m.group(1)

files = [Path("README.md")] + sorted(Path("docs").rglob("*.md"))
broken = []
for md in files:
    for n, t in links(md):
        if re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I) or t.startswith("#"):
            continue  # http(s), mailto, ...; or an anchor in this file
        file_part, _, anchor = t.partition("#")
        target = (md.parent / file_part).resolve() if file_part else md.resolve()
        if not target.exists():
            broken.append(f"{md}:{n}: {t}: no such file")
        elif anchor and target.suffix == ".md" and anchor.lower() not in anchors(target):
            broken.append(f"{md}:{n}: {t}: no heading #{anchor} in {os.path.relpath(target)}")
for b in broken:
    print(b)
if broken:
    print(f"{len(broken)} broken relative link(s)", file=sys.stderr)
    sys.exit(1)
print(f"doc links: {len(files)} files checked, no broken relative link")
PY
