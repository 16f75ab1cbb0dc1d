#!/usr/bin/env python3
"""L2 (and D1) misses per request of one function, per instruction, with the instruction itself.

Usage: bench/proxy/cache_misses_by_instruction.py CALLGRIND_FILE BINARY FUNCTION [TOP (40)] [MIN_DLMR (0.05)]

The file comes from callgrind.sh with `CALLGRIND_ARGS="--cache-sim=yes --LL=1048576,16,64 --dump-instr=yes
--compress-pos=no --compress-strings=no"` (absolute addresses: callgrind's relative ones are hard to read
back exactly) and STEADY=1; BINARY is the bench_proxy that ran (`objdump -d` of it gives each instruction).
FUNCTION is a substring of the function's name (`proxy::forward::forward::{{closure}}`). Requests are
counted as cache_misses.py does (calls to `ProxyBody::upstream`). A load that misses once per request
(DLmr 1.00) is one cold cache line; its offset from the future's base (`0x22a(%rsi)`) says which slot.
"""
import collections
import re
import subprocess
import sys

path, binary, want = sys.argv[1], sys.argv[2], sys.argv[3]
top = int(sys.argv[4]) if len(sys.argv) > 4 else 40
mind = float(sys.argv[5]) if len(sys.argv) > 5 else 0.05
cur = None; skip = False; events = None
costs = collections.defaultdict(lambda: [0]*9)
reqs = 0
for raw in open(path, errors='replace'):
    s = raw.rstrip('\n')
    if not s: continue
    if s.startswith('events:'): events = s.split()[1:]; continue
    if s.startswith('fn='): cur = s[3:]; continue
    if s.startswith('cfn='): cfn = s[4:]; continue
    if s.startswith('calls='):
        skip = True
        if cfn == 'proxy::body::ProxyBody::upstream': reqs += int(s.split('=')[1].split()[0])
        continue
    if s[0] in '0123456789':
        if skip: skip = False; continue
        if cur and want in cur:
            toks = s.split()
            a = int(toks[0], 16)
            c = costs[(cur, a)]
            for i, t in enumerate(toks[2:]): c[i] += int(t)
ie = {e: i for i, e in enumerate(events)}
print('requests', reqs)
tot = [sum(c[i] for c in costs.values()) for i in range(len(events))]
print('total', {e: round(tot[i]/reqs, 2) for e, i in ie.items()})
dis = {}
addrs = sorted(a for (_, a) in costs)
if addrs:
    out = subprocess.run(['objdump', '-d', '--no-show-raw-insn', '-C', f'--start-address={addrs[0]:#x}', f'--stop-address={addrs[-1]+16:#x}', binary], capture_output=True, text=True).stdout
    for l in out.splitlines():
        m = re.match(r'\s+([0-9a-f]+):\s+(.*)', l)
        if m: dis[int(m.group(1), 16)] = m.group(2)
rows = sorted(costs.items(), key=lambda kv: -(kv[1][ie['DLmr']]))
for (fn, a), c in rows[:top]:
    if c[ie['DLmr']]/reqs < mind: break
    print(f"{a:#x} x{c[ie['Ir']]/reqs:5.2f} D1mr {c[ie['D1mr']]/reqs:5.2f} DLmr {c[ie['DLmr']]/reqs:5.2f} DLmw {c[ie['DLmw']]/reqs:5.2f}  {dis.get(a,'?')[:60]:60} {fn[:50]}")
