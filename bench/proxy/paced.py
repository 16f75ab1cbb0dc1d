#!/usr/bin/env python3
"""The switch under an open-loop load (issue 20, session 33): reads the windows that
`bench_proxy paced-clients` writes ("WINDOW_MS DUE ANSWERED OK_OF_DUE P50_US P99_US MAX_US FAILED", 100 ms
windows of the wall clock) and the trigger (Unix ms), and prints one line:

- steady: the median count of answers in a second (any 10 tenths in a row) before the trigger, the first
  second of the schedule and the last 10 tenths before the trigger's own left out;
- the lowest second: the fewest answers in any 10 tenths in a row that start at or after the trigger and
  end before the schedule's last second, over steady, and when it started;
- the lowest 100 ms over the requests due in it (the offered rate: a lower count is answers held back);
- latency from when a request was due to its answer's end: the median of the tenths' p99 before the
  trigger, the highest tenth's p99 and max after it, and when;
- failed requests (connection errors, timeouts) and non-2xx answers over the whole run.

At an offered rate the machine serves with room, answers per second only fall when requests are held
up (a stall), not when something else takes CPU; the latency columns show how long they were held.

Usage: paced.py FILE TRIGGER_UNIX_MS
"""

import sys


def main():
    path, trigger = sys.argv[1], int(sys.argv[2])
    rows = [tuple(map(int, line.split())) for line in open(path) if line.strip() and not line.startswith("#")]
    if len(rows) < 40:
        print("too few windows")
        return
    by_t = {r[0]: r for r in rows}
    first = min(t for t, due, *_ in rows if due)
    last_due = max(t for t, due, *_ in rows if due)
    tenths = list(range(first, last_due + 100, 100))
    answered = [by_t.get(t, (t, 0, 0, 0, 0, 0, 0, 0))[2] for t in tenths]
    due = [by_t.get(t, (t, 0, 0, 0, 0, 0, 0, 0))[1] for t in tenths]
    trig = next((i for i, t in enumerate(tenths) if t + 100 > trigger), len(tenths))
    # Seconds as any 10 tenths in a row.
    sums = [sum(answered[i : i + 10]) for i in range(len(tenths) - 9)]
    before = sorted(sums[i] for i in range(10, max(10, trig - 10)))
    after = [(sums[i], i) for i in range(trig, len(sums) - 10)]
    if not before or not after:
        print("no steady seconds or nothing after the trigger")
        return
    steady = before[len(before) // 2]
    low, low_i = min(after)
    tenth_after = [(answered[i] / due[i] if due[i] else 1.0, i) for i in range(trig, len(tenths) - 10)]
    low_tenth, low_tenth_i = min(tenth_after)
    p99_before = sorted(by_t[t][5] for t in tenths[10:trig] if t in by_t and by_t[t][1])
    p99_steady = p99_before[len(p99_before) // 2] if p99_before else 0
    worst = max((by_t[t][5], by_t[t][6], t) for t in tenths[trig:] if t in by_t and by_t[t][1])
    failed = sum(r[7] for r in rows)
    non2xx = sum(r[1] - r[3] - r[7] for r in rows)
    at = lambda i: (tenths[i] - trigger) / 1000
    print(
        f"offered {due[trig - 1] if trig else 0}/100ms, steady {steady}/s, lowest second {low}/s "
        f"({low / steady:.3f}) from {at(low_i):+.1f} s, lowest 100 ms {low_tenth:.2f} of due at "
        f"{at(low_tenth_i):+.1f} s; p99 steady {p99_steady / 1000:.2f} ms, highest p99 {worst[0] / 1000:.2f} ms "
        f"(max {worst[1] / 1000:.1f} ms) at {(worst[2] - trigger) / 1000:+.1f} s; failed {failed}, non-2xx {non2xx}"
    )


if __name__ == "__main__":
    main()
