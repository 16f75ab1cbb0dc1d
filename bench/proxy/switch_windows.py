#!/usr/bin/env python3
"""Where in a deploy the answers per 100 ms fall (issue 20, session 29): lines up deployed.sh's
per-100-ms counts of Rollway's switch runs (OUT/persec-ROUND-rollway.txt.100ms) with the agent's
events (OUT/agent.log: the deploy's start, the new instances' start and health, the weights event,
which follows the proxy's `PUT /v1/state` answer), and prints per round the answers of each phase as a
ratio of steady (the median tenth from the run's second second to 1 s before the deploy's start):

  before   the 1.5 s before the deploy's start (the CLI packs and sends the release): the noise floor
  start    the deploy's start to the last new instance healthy (instances start, niced, and are checked)
  switch   0.1 s before the weights event to 0.5 s after it (the proxy adds, marks ready, weights the
           new instances and drains the old ones; the first requests reach the new instances)
  after    0.5 s to 2 s after the weights event (the old instances stop; the new ones serve)

each as "mean / lowest tenth", and the other processes' CPU in the switch window (cpu_trace.py's
"other", ms per 100 ms of two cores' 200). Then the tenths from 1.5 s before the weights event to 1.5 s
after it.

Usage: switch_windows.py OUT_DIR
"""

import datetime
import json
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


def main():
    out = sys.argv[1]
    log = events(f"{out}/agent.log")
    # Every deploy but the first (which had no traffic) is one switch run, in order.
    deploys = [d for _, kind, d in log if kind == "deployment.deploy"][1:]
    for round_n, deployment in enumerate(deploys, 1):
        mine = [(t, kind) for t, kind, d in log if d == deployment]
        start = min(t for t, _ in mine)
        weights = [t for t, kind in mine if kind == "deployment.weights"]
        if not weights:
            continue
        switch = weights[0]
        healthy = [t for t, kind, _ in log if kind == "instance.healthy" and start <= t <= switch]
        ready = max(healthy) if healthy else switch
        try:
            rows = [tuple(map(int, line.split())) for line in open(f"{out}/persec-{round_n}-rollway.txt.100ms")]
        except OSError:
            continue
        ok = {t: n for t, n, _ in rows}
        first = min(ok)
        steady_tenths = sorted(ok.get(t, 0) for t in range(first + 10, int(start * 10) - 10))
        steady = steady_tenths[len(steady_tenths) // 2]

        def window(a, b):
            tenths = [ok.get(t, 0) / steady for t in range(int(a * 10), int(b * 10))]
            return f"{sum(tenths) / len(tenths):.2f} / {min(tenths):.2f}" if tenths else "-"

        # The other processes' CPU (cpu_trace.py's "other": other builds and benchmarks on the machine)
        # in the switch window, ms per 100 ms: the trace's 0 is the script's trigger, taken here as the
        # deploy's start (the CLI takes tens of ms before the agent logs it).
        other = "-"
        try:
            lines = [line.split() for line in open(f"{out}/cpu-{round_n}.series")]
            column = lines[0].index("other")
            samples = [
                int(fields[column])
                for fields in lines[1:]
                if switch - 0.1 <= start + float(fields[0]) < switch + 0.5
            ]
            if samples:
                other = f"{sum(samples) / len(samples):.0f}"
        except (OSError, ValueError, IndexError):
            pass
        print(
            f"round {round_n}: steady {steady}/100ms; before {window(start - 1.5, start)}; "
            f"start {window(start, ready)} ({ready - start:.2f} s); switch {window(switch - 0.1, switch + 0.5)}; "
            f"after {window(switch + 0.5, switch + 2)}; other CPU in the switch window {other} ms/100ms"
        )
        w = int(switch * 10)
        print("  " + " ".join(f"{ok.get(t, 0) / steady:.2f}" for t in range(w - 15, w))
              + " | " + " ".join(f"{ok.get(t, 0) / steady:.2f}" for t in range(w, w + 16)))


if __name__ == "__main__":
    main()
