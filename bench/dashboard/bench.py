#!/usr/bin/env python3
"""Dashboard benchmark (issue 18) against a real `rollway agent`: release build, its proxy running,
APPS apps x 3 environments deployed with the process driver (demo-app), then 10 signed-in dashboard
clients that follow /events/stream as the page's script does (an SSE connection from the page's
last event id; on each event, after the script's 150 ms debounce, one re-read of the page) while
redeploys make events flow. Reports the agent process's VmRSS (/proc/PID/status), the overview's
render time and page weight, and the machine's load. Standard library only; binds 127.0.0.1.

Usage: bench.py ROLLWAY DEMO_APP [APPS]   (bench/dashboard/run.sh builds both and calls this)
Environment: REREAD=0 makes the followers hold their streams without re-reading the page.
"""

import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ENVIRONMENTS = ["production", "staging", "preview"]
FOLLOWERS = 10
RENDERS = 50
# REREAD=0: followers only hold their stream, without the page re-reads (to tell the two apart).
REREAD = os.environ.get("REREAD", "1") != "0"
# Events flow from this many redeploys while the followers are connected.
REDEPLOYS = 6
# Every wait is bounded.
START_PATIENCE_S = 30
DEPLOY_PATIENCE_S = 120


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def manifest(app, version):
    return f"""[app]
name = "{app}"

[services.web]
run = "{DEMO}"
replicas = 1
health = {{ path = "/health", interval = "100ms", timeout = "1s", healthy = 2, start_timeout = "20s" }}
drain = "1s"
stop_timeout = "2s"

[analysis]
observe = "0s"

[env]
VERSION = "{version}"
""" + "".join(
        f'\n[environments.{env}]\nroutes = {{ web = {{ hosts = ["{app}-{env}.localhost"] }} }}\n'
        for env in ENVIRONMENTS
    )


def request(method, path, cookie=None, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", API, timeout=30)
    hdrs = dict(headers or {})
    if cookie:
        hdrs["Cookie"] = f"rollway_session={cookie}"
    if body is not None:
        hdrs["Content-Type"] = "application/x-www-form-urlencoded"
    conn.request(method, path, body=body, headers=hdrs)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


def sign_in(token):
    response, _ = request("POST", "/login", body=urllib.parse.urlencode({"token": token}))
    cookie = response.getheader("Set-Cookie") or ""
    match = re.match(r"rollway_session=([0-9a-f]+)", cookie)
    if response.status != 303 or not match:
        sys.exit(f"sign-in failed: {response.status} {cookie!r}")
    return match.group(1)


def cli(*args, token=None, check=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLWAY_")}
    env["ROLLWAY_TOKEN"] = token or ADMIN
    env["ROLLWAY_STATE_DIR"] = os.path.join(WORK, "no-local-agent")
    env["NO_COLOR"] = "1"
    ran = subprocess.run(
        [ROLLWAY, *args, "--agent", f"http://127.0.0.1:{API}"],
        env=env, capture_output=True, text=True, timeout=DEPLOY_PATIENCE_S,
    )
    if check and ran.returncode != 0:
        sys.exit(f"rollway {' '.join(args)} exited {ran.returncode}:\n{ran.stderr}")
    return ran


def deploy(app, env, version):
    folder = os.path.join(WORK, "apps", app)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "rollway.toml"), "w") as f:
        f.write(manifest(app, version))
    cli("deploy", "--env", env, "--dir", folder)


class Follower(threading.Thread):
    """One open dashboard: the overview's SSE connection, and a page re-read per burst of events."""

    def __init__(self, cookie, after):
        super().__init__(daemon=True)
        self.cookie = cookie
        self.after = after
        self.events = 0
        self.rereads = 0
        self.stop = threading.Event()
        self.pending = None
        self.lock = threading.Lock()

    def reread(self):
        with self.lock:
            self.pending = None
        if not self.stop.is_set():
            response, _ = request("GET", "/", cookie=self.cookie, headers={"Accept": "text/html"})
            if response.status == 200:
                self.rereads += 1

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", API, timeout=120)
        conn.request("GET", f"/events/stream?after={self.after}",
                     headers={"Cookie": f"rollway_session={self.cookie}", "Accept": "text/event-stream"})
        response = conn.getresponse()
        if response.status != 200:
            print(f"follower: stream answered {response.status}", file=sys.stderr)
            return
        name = "message"
        while not self.stop.is_set():
            line = response.fp.readline()
            if not line:
                break
            line = line.decode("utf-8", "replace").rstrip("\r\n")
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line == "":
                name = "message"
            elif line.startswith("data:") and name == "event":
                self.events += 1
                if not REREAD:
                    continue
                with self.lock:
                    if self.pending is None:
                        self.pending = threading.Timer(0.15, self.reread)
                        self.pending.start()
        conn.close()


def sample_rss(pid, stop, peak):
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], status_kib(pid, "VmRSS"))
        except OSError:
            return
        time.sleep(0.1)


def main():
    global ROLLWAY, DEMO, WORK, API, ADMIN
    ROLLWAY, DEMO = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    n_apps = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    WORK = tempfile.mkdtemp(prefix="rollway-bench-dashboard-")
    # The agent runs apps as its own user: the binary goes where that user may read and run it.
    os.chmod(WORK, 0o755)
    shutil.copy(DEMO, os.path.join(WORK, "demo-app"))
    DEMO = os.path.join(WORK, "demo-app")
    state = os.path.join(WORK, "state")
    os.makedirs(state)
    API, proxy = free_port(), free_port()
    print(f"machine: {os.cpu_count()} CPUs, load average {loadavg()} at the start")
    log = open(os.path.join(WORK, "agent.log"), "w")
    agent = subprocess.Popen(
        [ROLLWAY, "agent", "--state", state, "--api", f"127.0.0.1:{API}",
         "--proxy", f"127.0.0.1:{proxy}", "--master-key", os.path.join(WORK, "master.key")],
        cwd=state, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
    )
    try:
        run(agent, state, n_apps)
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=20)
        except subprocess.TimeoutExpired:
            agent.kill()
        # Whatever still runs in the bench's directory (instances, the proxy) was started by it.
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    if os.readlink(f"/proc/{pid}/cwd").startswith(WORK):
                        os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
        subprocess.run(["rm", "-rf", WORK])


def run(agent, state, n_apps):
    global ADMIN
    deadline = time.monotonic() + START_PATIENCE_S
    token_file = os.path.join(state, "admin.token")
    while True:
        try:
            if request("GET", "/healthz")[0].status == 200 and os.path.exists(token_file):
                break
        except OSError:
            pass
        if agent.poll() is not None or time.monotonic() > deadline:
            sys.exit("the agent did not start; see its log")
        time.sleep(0.1)
    ADMIN = open(token_file).read().strip()
    print(f"agent: pid {agent.pid}, VmRSS {status_kib(agent.pid, 'VmRSS') / 1024:.1f} MiB at start")

    started = time.monotonic()
    for i in range(n_apps):
        for env in ENVIRONMENTS:
            deploy(f"app{i:02}", env, "v1")
    took = time.monotonic() - started
    instances = sum(1 for pid in os.listdir("/proc") if pid.isdigit() and is_demo(pid))
    print(f"deployed: {n_apps} apps x {len(ENVIRONMENTS)} environments in {took:.0f} s, "
          f"{instances} demo-app instances running")
    time.sleep(2)
    idle = status_kib(agent.pid, "VmRSS")
    print(f"agent VmRSS, deployed, no dashboard open: {idle / 1024:.1f} MiB")

    viewer = cli("tokens", "create", "--role", "viewer", "--name", "bench", "--json").stdout
    viewer = re.search(r'"token"\s*:\s*"([^"]+)"', viewer).group(1)
    cookie = sign_in(viewer)

    # The overview: time from connect to the last byte, and its weight with every asset.
    times = []
    for _ in range(RENDERS):
        t = time.monotonic()
        response, body = request("GET", "/", cookie=cookie)
        times.append((time.monotonic() - t) * 1000)
        if response.status != 200:
            sys.exit(f"overview answered {response.status}")
    times.sort()
    rows = body.count(b"<tr data-app=")
    weight = len(body)
    for asset in ["/assets/app.css", "/assets/app.js"]:
        weight += len(request("GET", asset)[1])
    print(f"overview: {rows} rows, median {times[len(times) // 2]:.1f} ms, "
          f"p90 {times[int(len(times) * 0.9)]:.1f} ms, max {times[-1]:.1f} ms over {RENDERS} renders")
    print(f"page weight: {weight / 1024:.1f} KiB (HTML {len(body)} B + app.css + app.js)")
    after = int(re.search(rb'data-live="all:(\d+)"', body).group(1))

    followers = [Follower(sign_in(viewer), after) for _ in range(FOLLOWERS)]
    for follower in followers:
        follower.start()
    time.sleep(2)
    connected = status_kib(agent.pid, "VmRSS")
    print(f"agent VmRSS, {FOLLOWERS} dashboards open, no events: {connected / 1024:.1f} MiB")

    stop, peak = threading.Event(), [connected]
    sampler = threading.Thread(target=sample_rss, args=(agent.pid, stop, peak), daemon=True)
    sampler.start()
    first = last_event_id(cookie)
    for i in range(REDEPLOYS):
        deploy(f"app{i % n_apps:02}", ENVIRONMENTS[i % len(ENVIRONMENTS)], "v2")
    time.sleep(2)
    stop.set()
    sampler.join()
    last = last_event_id(cookie)
    flowed = last - first
    after_flow = status_kib(agent.pid, "VmRSS")
    hwm = status_kib(agent.pid, "VmHWM")
    for follower in followers:
        follower.stop.set()
    counts = sorted(f.events for f in followers)
    rereads = sorted(f.rereads for f in followers)
    print(f"events: {flowed} recorded by {REDEPLOYS} redeploys, {last - after} since the followers' "
          f"starting point; each follower received {counts[0]}..{counts[-1]} and re-read the "
          f"overview {rereads[0]}..{rereads[-1]} times")
    print(f"agent VmRSS while events flowed: peak {peak[0] / 1024:.1f} MiB (sampled every 0.1 s), "
          f"after {after_flow / 1024:.1f} MiB; VmHWM (whole life) {hwm / 1024:.1f} MiB; goal < 30 MiB")
    proxy_pids = [p for p in os.listdir("/proc") if p.isdigit() and is_proxy(p)]
    for pid in proxy_pids:
        print(f"proxy: pid {pid}, VmRSS {status_kib(pid, 'VmRSS') / 1024:.1f} MiB (its own process)")
    print(f"machine: load average {loadavg()} at the end")


def last_event_id(cookie):
    _, body = request("GET", "/", cookie=cookie)
    return int(re.search(rb'data-live="all:(\d+)"', body).group(1))


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def is_demo(pid):
    argv = cmdline(pid)
    return bool(argv) and argv[0].decode(errors="replace") == DEMO


def is_proxy(pid):
    argv = cmdline(pid)
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return bool(argv) and cwd.startswith(WORK) and b"proxy" in argv[1:2]


if __name__ == "__main__":
    main()
