#!/usr/bin/env python3
"""The shape of a switch's dip at 100 ms (issue 20, session 29): reads the "tenth ok bad" lines that
deployed.sh's persec.lua writes (PERSEC_FILE.100ms, tenths of a second since the epoch) and the trigger
(epoch seconds), and prints one line: the steady rate per 100 ms (median of the tenths before the
trigger, its first and last second dropped), the lowest tenth and the lowest 300 ms (three tenths in a
row) from the trigger on, as ratios of steady, and when they were (seconds from the trigger).

Usage: per100.py FILE.100ms TRIGGER_EPOCH_S [SERIES_OUT]
SERIES_OUT: also writes every tenth from 1 s before the trigger on as "t_from_trigger ok ratio".
"""

import sys


def main():
    path, trigger = sys.argv[1], int(sys.argv[2]) * 10
    rows = sorted(tuple(map(int, line.split())) for line in open(path) if line.strip())
    if len(rows) < 30:
        print("too few samples")
        return
    first, last = rows[0][0], rows[-1][0]
    ok = {t: n for t, n, _ in rows}
    # Whole tenths only: drop the first and last second of the run.
    inner = range(first + 10, last - 10)
    before = sorted(ok.get(t, 0) for t in inner if t < trigger)
    after = [t for t in inner if t >= trigger]
    steady = before[len(before) // 2] if before else 0
    if not steady or not after:
        print("no steady rate or nothing after the trigger")
        return
    low_t = min(after, key=lambda t: ok.get(t, 0))
    windows = [t for t in after if t + 2 in ok or t + 2 < last - 10]
    low3_t = min(windows, key=lambda t: sum(ok.get(t + i, 0) for i in range(3)))
    low3 = sum(ok.get(low3_t + i, 0) for i in range(3)) / 3
    below = sum(1 for t in after if ok.get(t, 0) < 0.9 * steady)
    print(
        f"steady {steady}/100ms, lowest 100 ms {ok.get(low_t, 0)} ({ok.get(low_t, 0) / steady:.2f}) at "
        f"+{(low_t - trigger) / 10:.1f} s, lowest 300 ms {low3 / steady:.2f} at +{(low3_t - trigger) / 10:.1f} s, "
        f"{below} tenths below 0.9x"
    )
    if len(sys.argv) > 3:
        with open(sys.argv[3], "w") as out:
            for t in range(trigger - 10, last - 10):
                out.write(f"{(t - trigger) / 10:+.1f} {ok.get(t, 0)} {ok.get(t, 0) / steady:.2f}\n")


if __name__ == "__main__":
    main()
