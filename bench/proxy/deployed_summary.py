#!/usr/bin/env python3
"""Summary of bench/proxy/deployed.sh's results.tsv: per scenario and target, the rounds' values and
Rollway's ratios to nginx and HAProxy (per round, and of the means over the rounds)."""

import csv
import statistics
import sys
from collections import defaultdict

PEERS = ("nginx", "haproxy")


def num(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def main(path):
    rows = list(csv.DictReader(open(path), delimiter="\t"))
    by = defaultdict(list)  # (scenario, target) -> rows in round order
    scenarios = []
    for row in rows:
        if row["scenario"] not in scenarios:
            scenarios.append(row["scenario"])
        by[(row["scenario"], row["target"])].append(row)
    loads = [num(r["load1"]) for r in rows if num(r["load1"]) is not None]
    if loads:
        print(f"1-minute load average over the rows: {min(loads):.2f} to {max(loads):.2f}")
    for scenario in scenarios:
        print(f"\n== {scenario}")
        if scenario == "idle":
            for target in ("rollway",) + PEERS:
                for r in by[(scenario, target)]:
                    print(f"  round {r['round']} {target:8} RSS {r['rss_mb']:>6} MB  load {r['load1']:>5}  {r['note']}")
            continue
        if scenario in ("switch", "still", "pswitch", "pstill"):
            for target in ("rollway",) + PEERS:
                for r in by[(scenario, target)]:
                    print(f"  round {r['round']} {target:8} {r['note']}, non-2xx/errors {r['errors']}, load {r['load1']}")
            continue
        print(f"  {'target':8} {'req/s per round':>30} {'mean':>9} {'p99 ms per round':>24} "
              f"{'CPU us/req user+sys (mean)':>27} {'RSS MB':>7} {'errors':>6}")
        means = {}
        for target in ("rollway",) + PEERS:
            rs = by[(scenario, target)]
            if not rs:
                continue
            rps = [num(r["req_s"]) or 0.0 for r in rs]
            p99 = [num(r["p99_ms"]) for r in rs]
            user = [num(r["cpu_user_us_req"]) or 0.0 for r in rs]
            sys_ = [num(r["cpu_sys_us_req"]) or 0.0 for r in rs]
            means[target] = (statistics.mean(rps), statistics.median([p for p in p99 if p is not None] or [0.0]),
                             statistics.mean(user), statistics.mean(sys_), rps, p99)
            print(f"  {target:8} {' '.join(f'{v:9.0f}' for v in rps):>30} {means[target][0]:9.0f} "
                  f"{' '.join(f'{(p or 0):7.2f}' for p in p99):>24} "
                  f"{means[target][2]:12.1f} + {means[target][3]:6.1f}     "
                  f"{max(num(r['rss_mb']) or 0 for r in rs):7.1f} {sum(int(num(r['errors']) or 0) for r in rs):6d}")
        notes = [r["note"] for r in by[(scenario, "rollway")] if r["note"]]
        if notes:
            print(f"  rollway  {'; '.join(notes)} (client connections per worker, mid-run)")
        if "rollway" not in means:
            continue
        rw = means["rollway"]
        for peer in PEERS:
            if peer not in means:
                continue
            pm = means[peer]
            per_round = [a / b if b else 0.0 for a, b in zip(rw[4], pm[4])]
            p99_round = [a / b if a and b else 0.0 for a, b in zip(rw[5], pm[5])]
            cpu = (rw[2] + rw[3]) / (pm[2] + pm[3]) if pm[2] + pm[3] else 0.0
            # The median of the per-round ratios as well as the ratio of the means: with many rounds on a
            # machine whose speed drifts between minutes, it is the one an outlier round moves least.
            ratio_median = statistics.median(per_round) if per_round else 0.0
            p99_median = statistics.median([v for v in p99_round if v] or [0.0])
            print(f"  rollway/{peer:8} req/s {', '.join(f'{v:.2f}' for v in per_round)} (means {rw[0] / pm[0]:.2f}, "
                  f"median of rounds {ratio_median:.2f}); "
                  f"p99 {', '.join(f'{v:.2f}' for v in p99_round)} (medians {rw[1] / pm[1] if pm[1] else 0:.2f}, "
                  f"median of rounds {p99_median:.2f}); "
                  f"CPU/req {cpu:.2f}")


if __name__ == "__main__":
    main(sys.argv[1])
