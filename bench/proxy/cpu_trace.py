#!/usr/bin/env python3
"""Where the CPU goes around a deploy (issue 20, session 28): samples utime + stime of every process
on the machine from /proc/PID/stat at HZ (default 10) for SECONDS, and classifies each by the roles
given on the command line, load-independently (CPU-seconds, not rates).

Usage: cpu_trace.py OUT_PREFIX SECONDS TRIGGER_AT_S proxy=PID agent=PID wrk=PID apps=DIR rollway=EXE
  [peer=PID ...]
  - proxy, agent, wrk, peer: these pids and their descendants;
  - apps=DIR: processes whose working directory is under DIR (the instances, build/release commands);
  - rollway=EXE: other processes running EXE (the CLI: `rollway deploy`, `rollway status`);
  - everything else: "other".
Instances are told apart by pid (old ones run at the first sample, new ones appear after it); the
largest "other" processes are named by their command (another build on the machine, a kernel thread).

Writes OUT_PREFIX.series (one line per sample: time from the trigger, then CPU ms per role in that
sample) and OUT_PREFIX.summary (CPU ms per role per window: 5 s before the trigger, then 0-2, 2-5,
5-10, 10-15 s after it; the instances split into old and new; the proxy's threads apart, which shows
how evenly its workers share the connections), and prints the summary.
"""

import os
import sys
import time

HZ = 10
WINDOWS = [(-5, 0), (0, 2), (2, 5), (5, 10), (10, 15)]
TICK = os.sysconf("SC_CLK_TCK")


def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): ppid 4, minflt 10, utime 14, stime 15, nice 19.
    return int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[7]), int(rest[16])


def release_stats(sock):
    """The proxy's `GET /v1/stats` on its control socket: {release: (2xx answers, latency sum µs)}."""
    import json
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(0.05)
            conn.connect(sock)
            conn.sendall(b"GET /v1/stats HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        body = data.split(b"\r\n\r\n", 1)[1]
        return {
            entry["release"]: (entry["requests"]["success"], entry["latency"]["sum_us"])
            for entry in json.loads(body)
        }
    except (OSError, ValueError, IndexError, KeyError):
        return None


def cwd(pid):
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def exe(pid):
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def threads(pid):
    out = {}
    try:
        names = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in names:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        rest = text[text.rindex(")") + 2 :].split()
        out[f"{name}/{tid}"] = int(rest[11]) + int(rest[12])
    return out


def main():
    prefix, seconds, trigger_at = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    roots, apps, rollway, sock = {}, None, None, None
    for arg in sys.argv[4:]:
        key, value = arg.split("=", 1)
        if key == "apps":
            apps = value
        elif key == "sock":
            sock = value
        elif key == "rollway":
            rollway = value
        else:
            roots.setdefault(int(value), key)
    role_of = {}
    old_instances = set()
    other_by_comm = {}  # window index -> {comm: ticks}

    def classify(pid, ppid):
        if pid in role_of:
            return role_of[pid]
        if pid in roots:
            role = roots[pid]
        elif apps and cwd(pid).startswith(apps):
            role = "instance"
        elif ppid in role_of and role_of[ppid] not in ("other", "instance", "rollway"):
            role = role_of[ppid]
        elif rollway and exe(pid) == rollway:
            role = "rollway"
        else:
            role = "other"
        role_of[pid] = role
        return role

    def window_of(t):
        return next((k for k, (a, b) in enumerate(WINDOWS) if a <= t < b), None)

    start = time.monotonic()
    # The wall-clock time of the trace's 0 (the trigger), to line the samples up with logged events.
    with open(prefix + ".t0", "w") as f:
        f.write(f"{time.time() + trigger_at:.3f}\n")
    last = {}
    last_minflt = {}
    series = []
    faults = []  # per sample: {role: minor faults}, the instances' highest nice value
    releases = []  # per sample: (t, {release: (2xx answers, latency sum µs)}) from the proxy's socket
    proxy_threads_first = proxy_threads_last = None
    proxy_pid = next((pid for pid, role in roots.items() if role == "proxy"), None)
    n = int(seconds * HZ)
    for i in range(n + 1):
        now = time.monotonic() - start
        sample = {}
        minflt_sample = {}
        nice_new = None
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            got = stat(pid)
            if got is None:
                continue
            ppid, ticks, minflt, nice = got
            role = classify(pid, ppid)
            if role == "instance":
                if i == 0:
                    old_instances.add(pid)
                role = "instance-old" if pid in old_instances else "instance-new"
                if role == "instance-new":
                    nice_new = nice if nice_new is None else max(nice_new, nice)
            if role in ("instance-old", "instance-new", "proxy"):
                fdelta = minflt - last_minflt.get(pid, minflt if i == 0 else 0)
                last_minflt[pid] = minflt
                if fdelta:
                    minflt_sample[role] = minflt_sample.get(role, 0) + fdelta
            if pid in last:
                delta = ticks - last[pid]
            else:
                delta = 0 if i == 0 else ticks  # a process born since the last sample
            last[pid] = ticks
            if delta:
                sample[role] = sample.get(role, 0) + delta
                if role == "other":
                    window = window_of(now - trigger_at)
                    if window is not None:
                        by_comm = other_by_comm.setdefault(window, {})
                        name = comm(pid)
                        by_comm[name] = by_comm.get(name, 0) + delta
        if proxy_pid is not None:
            t = threads(proxy_pid)
            if i == 0:
                proxy_threads_first = t
            proxy_threads_last = t
        series.append((now - trigger_at, sample))
        faults.append((minflt_sample, nice_new))
        if sock:
            releases.append((time.monotonic() - start - trigger_at, release_stats(sock)))
        time.sleep(max(0.0, start + (i + 1) / HZ - time.monotonic()))

    roles = sorted({role for _, sample in series for role in sample})
    with open(prefix + ".series", "w") as f:
        f.write("t_s " + " ".join(roles) + "\n")
        for t, sample in series:
            f.write(f"{t:.1f} " + " ".join(str(sample.get(r, 0) * 1000 // TICK) for r in roles) + "\n")
    # Minor page faults of the instances (old, new) and the proxy per sample, and the new instances'
    # nice value (10 while they start lowered, the agent's once promoted).
    with open(prefix + ".faults", "w") as f:
        f.write("t_s minflt-instance-old minflt-instance-new minflt-proxy nice-new\n")
        for (t, _), (fs, nice) in zip(series, faults):
            f.write(
                f"{t:.1f} {fs.get('instance-old', 0)} {fs.get('instance-new', 0)} {fs.get('proxy', 0)} "
                f"{'-' if nice is None else nice}\n"
            )
    # The proxy's own count per release (2xx answers and their mean latency in each sample): which
    # release took how many requests when, load-independently of the client.
    if releases:
        names = sorted({r for _, got in releases if got for r in got})
        with open(prefix + ".releases", "w") as f:
            f.write("t_s " + " ".join(f"{r}:2xx {r}:mean_us" for r in names) + "\n")
            previous = {}
            for t, got in releases:
                if got is None:
                    f.write(f"{t:.2f} " + " ".join("- -" for _ in names) + "\n")
                    continue
                cells = []
                for r in names:
                    now_ok, now_us = got.get(r, previous.get(r, (0, 0)))
                    was_ok, was_us = previous.get(r, (now_ok, now_us))
                    answers = now_ok - was_ok
                    cells.append(f"{answers} {(now_us - was_us) // answers if answers > 0 else '-'}")
                    previous[r] = (now_ok, now_us)
                f.write(f"{t:.2f} " + " ".join(cells) + "\n")
    windows = WINDOWS
    lines = ["CPU ms per window (s from the trigger); * = total CPU-ms of the window"]
    lines.append("role".ljust(14) + "".join(f"{a:+d}..{b:+d}".rjust(10) for a, b in windows))
    for role in roles + ["*"]:
        row = []
        for a, b in windows:
            ticks = sum(
                (sample.get(role, 0) if role != "*" else sum(sample.values()))
                for t, sample in series[1:]
                if a <= t < b
            )
            row.append(ticks * 1000 // TICK)
        lines.append(role.ljust(14) + "".join(str(v).rjust(10) for v in row))
    for k, (a, b) in enumerate(windows):
        top = sorted(other_by_comm.get(k, {}).items(), key=lambda item: -item[1])[:4]
        lines.append(
            f"other {a:+d}..{b:+d}: "
            + ", ".join(f"{name} {ticks * 1000 // TICK}" for name, ticks in top)
        )
    if proxy_threads_first and proxy_threads_last:
        lines.append("proxy threads, CPU ms over the trace:")
        for name, ticks in sorted(proxy_threads_last.items()):
            used = (ticks - proxy_threads_first.get(name, 0)) * 1000 // TICK
            if used:
                lines.append(f"  {name}: {used}")
    text = "\n".join(lines) + "\n"
    with open(prefix + ".summary", "w") as f:
        f.write(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
