#!/usr/bin/env python3
"""What happens when, per 100 ms, around each Rollway switch of a deployed.sh run (issue 20, session 30).

Lines up, on the time of the agent's weights event (0 below):
  - the client's answers per 100 ms as a ratio of steady (wrk's persec.lua, as switch_windows.py);
  - the proxy's own count of 2xx answers per release and their mean latency (cpu_trace.py's `sock=`
    samples of `GET /v1/stats`, OUT/cpu-N.releases): which release took how much when, load-independently;
  - CPU ms per 100 ms of the proxy, the new and old instances and everything else (OUT/cpu-N.series);
  - minor page faults of the new and old instances, and the new instances' nice value (OUT/cpu-N.faults);
and prints the agent's events of the deployment on the same clock.

Usage: switch_trace.py OUT_DIR [FROM_S TO_S]   (default -1.0 to 6.0 s around the weights event)
"""

import datetime
import json
import re
import sys


def events(path):
    found = []
    for line in open(path):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        fields = entry.get("fields", {})
        if fields.get("message") != "Event.":
            continue
        when = datetime.datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
        found.append((when, fields.get("kind", ""), fields.get("deployment", "")))
    return found


def table(path):
    lines = [line.split() for line in open(path) if line.strip()]
    return lines[0], lines[1:]


def release_number(name):
    match = re.search(r"(\d+)$", name)
    return int(match.group(1)) if match else -1


def main():
    out = sys.argv[1]
    lo, hi = (float(sys.argv[2]), float(sys.argv[3])) if len(sys.argv) > 3 else (-1.0, 6.0)
    log = events(f"{out}/agent.log")
    deploys = [d for _, kind, d in log if kind == "deployment.deploy"][1:]
    for round_n, deployment in enumerate(deploys, 1):
        mine = [(t, kind) for t, kind, d in log if d == deployment]
        weights = [t for t, kind in mine if kind == "deployment.weights"]
        if not weights:
            continue
        w0 = weights[0]
        start = min(t for t, _ in mine)
        try:
            t0 = float(open(f"{out}/cpu-{round_n}.t0").read())
        except OSError:
            t0 = start
        print(f"== round {round_n} (deployment {deployment})")
        print("  events: " + ", ".join(f"{kind} {t - w0:+.2f}" for t, kind in mine)
              + "; " + ", ".join(f"{kind} {t - w0:+.2f}" for t, kind, d in log
                                 if d != deployment and start - 1 <= t <= w0 + hi and kind.startswith("instance")))
        # Client answers per 100 ms (tenths of wall-clock seconds).
        try:
            rows = [tuple(map(int, line.split())) for line in open(f"{out}/persec-{round_n}-rollway.txt.100ms")]
            ok = {t: n for t, n, _ in rows}
            first = min(ok)
            steady_tenths = sorted(ok.get(t, 0) for t in range(first + 10, int(start * 10) - 10))
            steady = steady_tenths[len(steady_tenths) // 2]
        except (OSError, ValueError, IndexError):
            ok, steady = {}, 0
        # The trace, keyed by the tenth relative to the weights event.
        def by_tenth(path):
            try:
                head, rows = table(path)
            except OSError:
                return [], {}
            keyed = {}
            for fields in rows:
                try:
                    rel = t0 + float(fields[0]) - w0
                except ValueError:
                    continue
                keyed[round(rel * 10)] = dict(zip(head[1:], fields[1:]))
            return head[1:], keyed

        cpu_head, cpu = by_tenth(f"{out}/cpu-{round_n}.series")
        _, faults = by_tenth(f"{out}/cpu-{round_n}.faults")
        rel_head, rels = by_tenth(f"{out}/cpu-{round_n}.releases")
        names = sorted({h.split(":")[0] for h in rel_head}, key=release_number)
        new, old = (names[-1], names[-2]) if len(names) >= 2 else (None, None)
        print(f"  steady {steady}/100ms (client); proxy 2xx and mean µs: new {new}, old {old}")
        print("   t_s  client |  new 2xx   µs |  old 2xx   µs | CPU proxy  new  old other | minflt new old | nice")
        for k in range(int(lo * 10), int(hi * 10) + 1):
            wall_tenth = int((w0 + k / 10) * 10)
            client = f"{ok.get(wall_tenth, 0) / steady:.2f}" if steady else "-"
            r = rels.get(k, {})
            c = cpu.get(k, {})
            f = faults.get(k, {})
            print(
                f"  {k / 10:+.1f}  {client:>6} | {r.get(f'{new}:2xx', '-'):>7} {r.get(f'{new}:mean_us', '-'):>4} |"
                f" {r.get(f'{old}:2xx', '-'):>7} {r.get(f'{old}:mean_us', '-'):>4} |"
                f" {c.get('proxy', '-'):>9} {c.get('instance-new', '-'):>4} {c.get('instance-old', '-'):>4}"
                f" {c.get('other', '-'):>5} | {f.get('minflt-instance-new', '-'):>10} {f.get('minflt-instance-old', '-'):>3} |"
                f" {f.get('nice-new', '-')}"
            )


if __name__ == "__main__":
    main()
