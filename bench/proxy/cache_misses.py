#!/usr/bin/env python3
"""Cache misses per request, per function, from a callgrind file made with the cache simulation.

Usage: bench/proxy/cache_misses.py CALLGRIND_FILE [TOP (25)] [REQUESTS]

The file comes from `CALLGRIND_ARGS="--cache-sim=yes --LL=1048576,16,64" CALLGRIND_KEEP=DIR
bench/proxy/callgrind.sh` (STEADY=1 for a window without new connections). `--LL` set to one core's L2
(1 MiB here) makes callgrind's last-level columns (DLmr, DLmw) the L2 misses: callgrind's default LL is the
host's last level, which in this VM reads as 256 MB, so only first touches would miss it. REQUESTS defaults
to the proxy's own count in the window (calls to Rollway's `ProxyBody::upstream`, nginx's
`ngx_http_create_request`). Prints the totals per request, then the TOP functions by L2 misses (exclusive).
"""
import re
import subprocess
import sys

COUNTERS = ("proxy::body::ProxyBody::upstream", "ngx_http_create_request")
SHOWN = ("Ir", "D1mr", "D1mw", "DLmr", "DLmw")


def requests_in(path):
    """Calls to the functions called once per request (`calls=` lines under their `cfn=`)."""
    names, current, total = {}, None, 0
    with open(path, errors="replace") as lines:
        for line in lines:
            if line.startswith(("cfn=", "fn=")):
                m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.strip())
                if m and m.group(2):
                    names[m.group(1)] = m.group(2)
                if line.startswith("cfn="):
                    current = names.get(m.group(1)) if m else line.strip()[4:]
            elif line.startswith("calls=") and current in COUNTERS:
                total += int(line.split("=")[1].split()[0])
    return total


def main():
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    requests = int(sys.argv[3]) if len(sys.argv) > 3 else requests_in(path)
    if requests == 0:
        sys.exit(f"{path}: no request counted (give REQUESTS)")
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", "--sort=DLmr,DLmw", path],
        capture_output=True, text=True, check=True,
    ).stdout
    events, rows, totals, in_table = None, [], None, False
    for line in out.splitlines():
        if line.startswith("Events shown:"):
            events = line.split(":", 1)[1].split()
            continue
        if events is None:
            continue
        clean = re.sub(r" \([ 0-9.%]+\)", "", line)
        tokens = clean.split()
        if "PROGRAM TOTALS" in line:
            totals = [0 if t == "." else int(t.replace(",", "")) for t in tokens[: len(events)]]
            continue
        if "file:function" in line:
            in_table = True
            continue
        if not in_table:
            continue
        if not re.match(r"^\s*[\d,.]", line):
            if rows:
                break
            continue
        try:
            values = [0 if t == "." else int(t.replace(",", "")) for t in tokens[: len(events)]]
        except ValueError:
            continue
        rows.append((values, " ".join(tokens[len(events):])))
    index = [events.index(e) for e in SHOWN]
    print(f"{path}: {requests} requests")
    print("per request: " + "  ".join(f"{e} {totals[i] / requests:.1f}" for e, i in zip(SHOWN, index)))
    print("".join(f"{e:>8}" for e in SHOWN) + "  function (exclusive, per request)")
    rows.sort(key=lambda row: -(row[0][index[3]] + row[0][index[4]]))
    for values, name in rows[:top]:
        print("".join(f"{values[i] / requests:8.1f}" for i in index) + "  " + name[:140])


if __name__ == "__main__":
    main()
