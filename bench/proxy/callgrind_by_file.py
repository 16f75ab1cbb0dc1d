#!/usr/bin/env python3
"""Exclusive instructions per request by source file, from a callgrind profile kept by callgrind.sh.

Usage: callgrind_by_file.py CALLGRIND_OUT REQUESTS [PATTERN]
Build with `CARGO_PROFILE_RELEASE_DEBUG=line-tables-only` and run callgrind.sh with CALLGRIND_KEEP=<dir>.
Each cost line is counted in the file its line is in (`fi=`/`fe=` switch it), so code that LTO inlined into
another crate's function still counts in its own file: hyper's lines inlined into the proxy's stream loop
count as hyper's. A call's inclusive cost (the line after `calls=`) is not counted. Prints the totals per
crate (grouped by path), then, with PATTERN, every file and file:function whose path contains it.
Exclusive only: what a crate's lines call in another crate is counted there.
"""
import collections
import re
import sys

GROUPS = ['hyper-1', 'h2-0', 'hyper-util', 'tokio-1', 'futures-util', 'http-1', 'bytes-1', 'mimalloc',
          'crates/proxy/src', 'library/core', 'library/alloc', 'library/std', 'sysdeps', 'tracing',
          'httparse', 'slab', 'indexmap', 'hashbrown']

names = {}


def name(kind, rest):
    match = re.match(r'\((\d+)\)(?: (.*))?', rest)
    if not match:
        return rest
    key = (kind, match.group(1))
    if match.group(2) is not None:
        names[key] = match.group(2)
    return names.get(key, '?')


def main():
    per_file = collections.Counter()
    per_function = collections.Counter()
    fl = current = fn = '?'
    skip = False
    with open(sys.argv[1], errors='replace') as profile:
        for line in profile:
            line = line.rstrip('\n')
            if not line:
                continue
            if skip:
                skip = False
                continue
            if line.startswith('fl='):
                fl = current = name('fl', line[3:])
            elif line.startswith(('fi=', 'fe=')):
                current = name('fl', line[3:])
            elif line.startswith('fn='):
                fn = name('fn', line[3:])
                current = fl
            elif line.startswith('calls='):
                skip = True
            elif line.startswith(('cfl=', 'cfi=')):
                name('fl', line[4:])
            elif line.startswith('cfn='):
                name('fn', line[4:])
            elif line[0] in '0123456789+-*':
                parts = line.split()
                if len(parts) >= 2:
                    per_file[current] += int(parts[1])
                    per_function[(current, fn)] += int(parts[1])
    requests = float(sys.argv[2])
    print(f'total per request {sum(per_file.values()) / requests:.1f}')
    groups = collections.Counter()
    for path, instructions in per_file.items():
        groups[next((group for group in GROUPS if group in path), path)] += instructions
    for group, instructions in groups.most_common(25):
        print(f'{instructions / requests:10.1f} {group}')
    if len(sys.argv) > 3:
        pattern = sys.argv[3]
        print('--- files containing', pattern)
        for path, instructions in per_file.most_common():
            if pattern in path:
                print(f'{instructions / requests:10.1f} {path}')
        print('--- file :: function, files containing', pattern)
        for (path, function), instructions in per_function.most_common():
            if pattern in path and instructions / requests >= 1:
                print(f'{instructions / requests:10.1f} {path.split("/src/")[-1]} :: {function[:110]}')


if __name__ == '__main__':
    main()
