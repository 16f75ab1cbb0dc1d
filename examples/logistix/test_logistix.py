"""Tests for logistix: real processes, a real database, real HTTP on 127.0.0.1.

    python3 -m unittest discover -s examples/logistix -p 'test_*.py'   # from the repo root
    python3 -m unittest test_logistix                                   # from this folder
"""

import base64
import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECRET = "test-secret-0123456789"
TIMEOUT = 10  # seconds; bounds every wait on a process or a socket


def run(script, env, cwd=HERE, *args):
    return subprocess.run([sys.executable, str(cwd / script), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=TIMEOUT)


def base_env(db_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "HOST", "JWT_SECRET", "DATABASE_URL", "VERSION")}
    return {**env, "PORT": "0", "JWT_SECRET": SECRET, "DATABASE_URL": f"sqlite:///{db_path}", "VERSION": "1.2.3"}


class App:
    """app.py as a subprocess on a free port (PORT=0; the port is read from its log)."""

    def __init__(self, env, cwd=HERE):
        self.log_path = Path(tempfile.mkstemp(suffix=".log")[1])
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, str(cwd / "app.py")], env=env, cwd=cwd,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            for line in self.log_lines():
                if line.get("msg") == "listening":
                    self.port = line["port"]
                    return
            if self.proc.poll() is not None:
                raise AssertionError(f"app exited {self.proc.returncode}: {self.log_path.read_text()}")
            time.sleep(0.05)
        self.stop()
        raise AssertionError("app did not start listening")

    def log_lines(self):
        lines = []
        for text in self.log_path.read_text().splitlines():
            try:
                lines.append(json.loads(text))
            except ValueError:
                pass
        return lines

    def request(self, method, path, body=None, token=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            headers = dict(headers or {})
            if token:
                headers["Authorization"] = f"Bearer {token}"
            data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            return response.status, json.loads(response.read()), response
        finally:
            conn.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(TIMEOUT)
        self.log_path.unlink(missing_ok=True)
        return self.proc.returncode


class TempDirTest(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="logistix-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.db_path = self.tmp / "logistix.db"
        self.env = base_env(self.db_path)

    def migrate(self, cwd=HERE):
        result = run("migrate.py", self.env, cwd)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result

    def start(self, cwd=HERE):
        app = App(self.env, cwd)
        self.addCleanup(app.stop)
        return app


class ApiTest(TempDirTest):
    def setUp(self):
        super().setUp()
        self.migrate()
        self.app = self.start()
        self.token = run("app.py", {"JWT_SECRET": SECRET}, HERE, "--mint-token", "tester").stdout.strip()

    def create(self, reference, **extra):
        body = {"reference": reference, "origin": "Lyon", "destination": "Oslo", **extra}
        return self.app.request("POST", "/shipments", body, token=self.token)

    def test_index_and_health(self):
        self.assertEqual(self.app.request("GET", "/")[:2], (200, {"name": "logistix", "version": "1.2.3"}))
        self.assertEqual(self.app.request("GET", "/health")[:2], (200, {"status": "ok", "version": "1.2.3"}))

    def test_create_get_and_list(self):
        status, first, _ = self.create("LX-1")
        self.assertEqual(status, 201)
        self.assertEqual((first["reference"], first["status"]), ("LX-1", "created"))
        self.assertEqual([(e["status"], e["location"]) for e in first["events"]], [("created", "Lyon")])
        _, second, _ = self.create("LX-2")

        status, got, _ = self.app.request("GET", f"/shipments/{first['id']}")
        self.assertEqual((status, got), (200, first))
        status, listed, _ = self.app.request("GET", "/shipments")
        self.assertEqual([s["reference"] for s in listed["shipments"]], ["LX-2", "LX-1"])  # newest first

        self.app.request("POST", f"/shipments/{second['id']}/events", {"status": "picked_up"}, token=self.token)
        _, picked, _ = self.app.request("GET", "/shipments?status=picked_up")
        self.assertEqual([s["reference"] for s in picked["shipments"]], ["LX-2"])
        status, error, _ = self.app.request("GET", "/shipments?status=lost")
        self.assertEqual(status, 400)
        self.assertIn("'status'", error["error"]["message"])

    def test_tracking_events_and_transitions(self):
        _, shipment, _ = self.create("LX-3")
        path = f"/shipments/{shipment['id']}/events"
        status, error, _ = self.app.request("POST", path, {"status": "delivered"}, token=self.token)
        self.assertEqual((status, error["error"]["code"]), (409, "invalid_transition"))
        for step, location in [("picked_up", "Lyon"), ("in_transit", "Basel"), ("delivered", "Oslo")]:
            status, shipment, _ = self.app.request("POST", path, {"status": step, "location": location}, token=self.token)
            self.assertEqual((status, shipment["status"]), (201, step))
        self.assertEqual([e["status"] for e in shipment["events"]], ["created", "picked_up", "in_transit", "delivered"])
        status, error, _ = self.app.request("POST", path, {"status": "exception"}, token=self.token)
        self.assertEqual((status, error["error"]["code"]), (409, "invalid_transition"))
        status, error, _ = self.app.request("POST", path, {"status": "lost"}, token=self.token)
        self.assertEqual(status, 400)
        self.assertIn("'status'", error["error"]["message"])
        status, _, _ = self.app.request("POST", "/shipments/999/events", {"status": "picked_up"}, token=self.token)
        self.assertEqual(status, 404)

    def test_validation_errors(self):
        status, error, _ = self.app.request("POST", "/shipments", b"{not json", token=self.token)
        self.assertEqual((status, error["error"]["code"]), (400, "invalid_json"))
        status, error, _ = self.app.request("POST", "/shipments", {"reference": "LX-4", "origin": "Lyon"}, token=self.token)
        self.assertEqual(status, 400)
        self.assertIn("'destination'", error["error"]["message"])
        self.assertEqual(self.create("LX-5")[0], 201)
        self.assertEqual(self.create("LX-5")[0], 409)  # references are unique
        self.assertEqual(self.app.request("GET", "/shipments/12345")[0], 404)
        self.assertEqual(self.app.request("GET", "/nowhere")[0], 404)
        self.assertEqual(self.app.request("DELETE", "/shipments")[0], 405)

    def test_writes_need_a_valid_token(self):
        body = {"reference": "LX-6", "origin": "Lyon", "destination": "Oslo"}
        header, payload, signature = self.token.split(".")
        forged = run("app.py", {"JWT_SECRET": "another-secret-0123456789"}, HERE, "--mint-token", "x").stdout.strip()
        expired_payload = base64.urlsafe_b64encode(b'{"sub":"x","exp":1}').rstrip(b"=").decode()
        none_header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
        for token in [None, "garbage", forged, f"{header}.{expired_payload}.{signature}", f"{none_header}.{payload}."]:
            status, error, response = self.app.request("POST", "/shipments", body, token=token)
            self.assertEqual((status, error["error"]["code"]), (401, "unauthorized"), token)
            self.assertEqual(response.getheader("WWW-Authenticate"), "Bearer")
        self.assertEqual(self.app.request("GET", "/shipments")[0], 200)  # reads are open
        self.assertEqual(self.create("LX-6")[0], 201)

    def test_logs_are_json_lines_with_request_ids_and_no_secrets(self):
        status, _, response = self.app.request("GET", "/health", headers={"X-Request-Id": "req-42"})
        self.assertEqual(response.getheader("X-Request-Id"), "req-42")
        self.create("LX-7")
        time.sleep(0.1)
        lines = self.app.log_lines()
        access = [line for line in lines if line.get("request_id") == "req-42"]
        self.assertEqual(len(access), 1)
        self.assertLessEqual({"ts", "level", "msg", "method", "path", "status", "duration_ms"}, set(access[0]))
        self.assertEqual((access[0]["method"], access[0]["path"], access[0]["status"]), ("GET", "/health", 200))
        text = self.app.log_path.read_text()
        self.assertEqual(len(text.splitlines()), len(lines))  # every line is JSON
        for secret in (SECRET, self.token, "Bearer"):
            self.assertNotIn(secret, text)

    def test_health_fails_when_the_schema_is_behind(self):
        with sqlite3.connect(self.db_path) as conn:
            conn.execute("DELETE FROM schema_migrations WHERE version = 2")
        status, body, _ = self.app.request("GET", "/health")
        self.assertEqual((status, body["status"]), (503, "unavailable"))


class StartupTest(TempDirTest):
    def test_missing_config_names_every_variable(self):
        env = {k: v for k, v in self.env.items() if k not in ("JWT_SECRET", "DATABASE_URL")}
        result = run("app.py", env)
        self.assertEqual(result.returncode, 2)
        self.assertEqual(result.stderr.strip(), "logistix: missing required config: JWT_SECRET, DATABASE_URL")
        result = run("app.py", {k: v for k, v in env.items() if k != "PORT"})
        self.assertIn("missing required config: PORT, JWT_SECRET, DATABASE_URL", result.stderr)

    def test_invalid_config_is_reported_without_values(self):
        env = {**self.env, "JWT_SECRET": "short-s3cr3t", "DATABASE_URL": "postgres://admin:hunter2@db/prod"}
        result = run("app.py", env)
        self.assertEqual(result.returncode, 2)
        self.assertIn("JWT_SECRET must be at least 16 characters", result.stderr)
        self.assertIn("sqlite:///ABSOLUTE/PATH", result.stderr)
        for value in ("short-s3cr3t", "hunter2", "admin"):
            self.assertNotIn(value, result.stderr + result.stdout)

    def test_refuses_to_start_on_an_unmigrated_database(self):
        result = run("app.py", self.env)  # no database file at all
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("run migrate.py", result.stderr)
        self.assertFalse(self.db_path.exists())  # and it did not create one
        sqlite3.connect(self.db_path).close()  # an empty database
        result = run("app.py", self.env)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("001_create_shipments, 002_create_tracking_events", result.stderr)
        self.assertIn("run migrate.py", result.stderr)

    def test_sigterm_finishes_the_request_in_flight_then_exits_0(self):
        self.migrate()
        app = self.start()
        token = run("app.py", {"JWT_SECRET": SECRET}, HERE, "--mint-token", "tester").stdout.strip()
        idle = socket.create_connection(("127.0.0.1", app.port), timeout=TIMEOUT)  # must not delay shutdown
        self.addCleanup(idle.close)
        body = json.dumps({"reference": "LX-8", "origin": "Lyon", "destination": "Oslo"}).encode()
        busy = socket.create_connection(("127.0.0.1", app.port), timeout=TIMEOUT)
        self.addCleanup(busy.close)
        busy.sendall(b"POST /shipments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + token.encode() + b"\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:10])
        time.sleep(0.3)  # the request is now in flight, waiting for the rest of its body
        app.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + TIMEOUT
        while True:  # the listener closes: no new connections
            try:
                socket.create_connection(("127.0.0.1", app.port), timeout=1).close()
            except ConnectionRefusedError:
                break
            except ConnectionResetError:
                pass  # queued in the backlog as the listener closed: the next try is refused
            self.assertLess(time.monotonic(), deadline, "listener still open after SIGTERM")
            time.sleep(0.05)
        self.assertIsNone(app.proc.poll())  # still finishing the request in flight
        busy.sendall(body[10:])
        response = http.client.HTTPResponse(busy)
        response.begin()
        self.assertEqual(response.status, 201)
        self.assertEqual(json.loads(response.read())["reference"], "LX-8")
        self.assertEqual(app.proc.wait(TIMEOUT), 0)


class MigrateTest(TempDirTest):
    def tables(self):
        with sqlite3.connect(self.db_path) as conn:
            return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def versions(self):
        with sqlite3.connect(self.db_path) as conn:
            return [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]

    def test_migrate_is_idempotent(self):
        first = self.migrate()
        self.assertIn("applied 001_create_shipments", first.stdout)
        self.assertIn("applied 002_create_tracking_events", first.stdout)
        second = self.migrate()
        self.assertNotIn("applied 0", second.stdout)
        self.assertIn("schema at version 002 (up to date)", second.stdout)
        self.assertEqual(self.versions(), [1, 2])

    def test_a_failing_migration_is_rolled_back_and_exits_non_zero(self):
        self.migrate()
        copy = self.tmp / "app"
        shutil.copytree(HERE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.db*"))
        (copy / "migrations" / "003_broken.sql").write_text(
            "CREATE TABLE half_done (id INTEGER);\nALTER TABLE nowhere ADD COLUMN x TEXT;\n")
        result = run("migrate.py", self.env, copy)
        self.assertEqual(result.returncode, 1)
        self.assertIn("003_broken failed", result.stderr)
        self.assertIn("schema stays at version 002", result.stderr)
        self.assertNotIn("half_done", self.tables())
        self.assertEqual(self.versions(), [1, 2])

    def test_the_previous_release_stays_healthy_on_a_newer_schema(self):
        # What a deploy and a rollback do: the new release migrates, the old one keeps serving.
        self.migrate()
        copy = self.tmp / "app"
        shutil.copytree(HERE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.db*"))
        (copy / "migrations" / "003_add_weight.sql").write_text("ALTER TABLE shipments ADD COLUMN weight_kg REAL;\n")
        self.assertIn("applied 003_add_weight", self.migrate(copy).stdout)
        app = self.start()
        self.assertEqual(app.request("GET", "/health")[:2], (200, {"status": "ok", "version": "1.2.3"}))

    def test_bad_database_url(self):
        result = run("migrate.py", {**self.env, "DATABASE_URL": "mysql://root:pw@db/x"})
        self.assertEqual(result.returncode, 2)
        self.assertIn("sqlite:PATH", result.stderr)
        self.assertNotIn("pw@", result.stderr)


if __name__ == "__main__":
    unittest.main()
