"""Logistix: a small shipment-tracking HTTP JSON API (standard library only).

    PORT=8000 JWT_SECRET=... DATABASE_URL=sqlite:logistix.db python3 app.py
    JWT_SECRET=... python3 app.py --mint-token alice      # prints a bearer token

Reads are open; writes need `Authorization: Bearer <HS256 JWT>`. The schema
must have been migrated by migrate.py (the release command) beforehand.
"""

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import select
import signal
import sqlite3
import sys
import threading
import time
import uuid
from contextlib import closing
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import db

NAME = "logistix"
VERSION = os.environ.get("VERSION", "dev")
MAX_BODY = 64 * 1024
KEEPALIVE_IDLE = 5.0  # seconds an idle keep-alive connection is kept open

# Which status a shipment may move to from each status. Nothing follows delivered.
TRANSITIONS = {
    "created": {"picked_up", "exception"},
    "picked_up": {"in_transit", "delivered", "exception"},
    "in_transit": {"in_transit", "delivered", "exception"},
    "exception": {"picked_up", "in_transit", "delivered", "exception"},
    "delivered": set(),
}

log = logging.getLogger(NAME)


class JsonFormatter(logging.Formatter):
    def format(self, record):
        entry = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "msg": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# --- HS256 JSON Web Tokens -------------------------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint_token(secret: str, subject: str, ttl: int = 3600) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"sub": subject, "iat": int(time.time()), "exp": int(time.time()) + ttl}).encode())
    signature = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(signature)}"


def verify_token(secret: str, token: str) -> dict:
    """Return the token's claims, or raise ApiError 401."""
    invalid = ApiError(401, "unauthorized", "invalid bearer token")
    try:
        header, payload, signature = token.split(".")
        if json.loads(b64url_decode(header)).get("alg") != "HS256":
            raise invalid
        expected = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, b64url_decode(signature)):
            raise invalid
        claims = json.loads(b64url_decode(payload))
    except (ValueError, AttributeError):  # bad base64, bad JSON, wrong number of parts
        raise invalid from None
    if not isinstance(claims, dict):
        raise invalid
    if "exp" in claims and not (isinstance(claims["exp"], (int, float)) and claims["exp"] > time.time()):
        raise ApiError(401, "unauthorized", "bearer token expired")
    return claims


# --- Shipments ---------------------------------------------------------------

SHIPMENT = "SELECT id, reference, origin, destination, status, created_at, updated_at FROM shipments"


def shipment_json(conn, row, with_events: bool) -> dict:
    shipment = dict(row)
    if with_events:
        events = conn.execute("SELECT id, status, location, created_at FROM tracking_events "
                              "WHERE shipment_id = ? ORDER BY id", (row["id"],))
        shipment["events"] = [dict(event) for event in events]
    return shipment


def find_shipment(conn, shipment_id: str):
    row = conn.execute(f"{SHIPMENT} WHERE id = ?", (int(shipment_id),)).fetchone()
    if row is None:
        raise ApiError(404, "not_found", f"shipment {shipment_id} not found")
    return row


def text_field(body: dict, field: str, required: bool = True):
    value = body.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise ApiError(400, "invalid_field", f"field '{field}' must be a non-empty string of at most 200 characters")
    return value.strip()


class Handler(BaseHTTPRequestHandler):
    server_version = NAME
    protocol_version = "HTTP/1.1"
    timeout = 30  # no socket read may hang longer than this

    ROUTES = [(method, re.compile(pattern), action) for method, pattern, action in [
        ("GET", r"/", "index"),
        ("GET", r"/health", "health"),
        ("GET", r"/shipments", "list_shipments"),
        ("POST", r"/shipments", "create_shipment"),
        ("GET", r"/shipments/(\d{1,18})", "get_shipment"),
        ("POST", r"/shipments/(\d{1,18})/events", "add_event"),
    ]]

    # -- plumbing --

    def handle(self):
        # Like BaseHTTPRequestHandler.handle, but a connection with no request
        # coming is closed after KEEPALIVE_IDLE seconds, or at once when the
        # server is stopping, so that shutdown only waits for real requests.
        # (Pipelined requests are not supported; no common client sends them.)
        self.close_connection = False
        while not self.close_connection and self.wait_for_request():
            self.handle_one_request()

    def wait_for_request(self) -> bool:
        deadline = time.monotonic() + KEEPALIVE_IDLE
        while not select.select([self.connection], [], [], 0.1)[0]:
            if self.server.stopping.is_set() or time.monotonic() > deadline:
                return False
        return True

    def do_GET(self):
        self.dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

    def dispatch(self):
        self.started = time.monotonic()
        given = self.headers.get("X-Request-Id", "")
        self.request_id = given if re.fullmatch(r"[\w.:-]{1,128}", given) else uuid.uuid4().hex
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        try:
            self.body = self.read_body()
            action, args = self.route(url.path)
            status, payload = getattr(self, action)(*args)
        except ApiError as e:
            status, payload = e.status, {"error": {"code": e.code, "message": e.message}}
        except Exception:
            log.exception("unhandled error", extra={"fields": {"request_id": self.request_id}})
            status, payload = 500, {"error": {"code": "internal", "message": "internal server error"}}
        self.respond(status, payload)

    def route(self, path: str):
        allowed = []
        for method, pattern, action in self.ROUTES:
            match = pattern.fullmatch(path)
            if match and method == self.command:
                return action, match.groups()
            if match:
                allowed.append(method)
        if allowed:
            raise ApiError(405, "method_not_allowed", f"{self.command} not allowed here; use {', '.join(allowed)}")
        raise ApiError(404, "not_found", f"no route for {path}")

    def read_body(self) -> bytes:
        # Always read the whole body first, so that an error answer leaves the
        # connection ready for the next request.
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise ApiError(411, "length_required", "send the body with a Content-Length header")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            raise ApiError(413 if length > MAX_BODY else 400, "invalid_body", f"body must be at most {MAX_BODY} bytes")
        return self.rfile.read(length)

    def json_body(self) -> dict:
        try:
            body = json.loads(self.body)
        except ValueError:
            raise ApiError(400, "invalid_json", "request body must be valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_json", "request body must be a JSON object")
        return body

    def require_auth(self) -> str:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthorized", "missing 'Authorization: Bearer <token>' header")
        return verify_token(self.server.jwt_secret, token.strip()).get("sub", "")

    def respond(self, status: int, payload: dict):
        data = json.dumps(payload).encode()
        if self.server.stopping.is_set():
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Request-Id", self.request_id)
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        log.info("request", extra={"fields": {
            "method": self.command, "path": urlsplit(getattr(self, "path", "")).path, "status": status,
            "duration_ms": round((time.monotonic() - self.started) * 1000, 2), "request_id": self.request_id}})

    def send_error(self, code, message=None, explain=None):
        # Malformed requests (bad request line, oversized headers) get JSON too.
        self.started, self.request_id, self.close_connection = time.monotonic(), uuid.uuid4().hex, True
        self.respond(code, {"error": {"code": HTTPStatus(code).name.lower(), "message": message or HTTPStatus(code).phrase}})

    def log_request(self, code="-", size="-"):
        pass  # respond() writes the access log line

    def log_message(self, format, *args):
        log.warning(format % args)

    def db(self):
        return closing(db.connect(self.server.db_path))

    # -- endpoints --

    def index(self):
        return 200, {"name": NAME, "version": VERSION}

    def health(self):
        try:
            with self.db() as conn:
                conn.execute("SELECT 1")
                missing = db.missing_migrations(conn)
        except sqlite3.Error as e:
            log.error("health check failed", extra={"fields": {"error": str(e)}})
            return 503, {"status": "unavailable", "version": VERSION, "reason": "database unreachable"}
        if missing:
            return 503, {"status": "unavailable", "version": VERSION,
                         "reason": f"schema not migrated: {', '.join(m.name for m in missing)}"}
        return 200, {"status": "ok", "version": VERSION}

    def list_shipments(self):
        status = self.query.get("status", [None])[0]
        if status is not None and status not in TRANSITIONS:
            raise ApiError(400, "invalid_field", f"query parameter 'status' must be one of {', '.join(TRANSITIONS)}")
        limit = self.query.get("limit", ["50"])[0]
        if not limit.isdigit() or not 1 <= int(limit) <= 200:
            raise ApiError(400, "invalid_field", "query parameter 'limit' must be between 1 and 200")
        with self.db() as conn:
            rows = conn.execute(f"{SHIPMENT} WHERE ? IS NULL OR status = ? ORDER BY id DESC LIMIT ?",
                                (status, status, int(limit))).fetchall()
            return 200, {"shipments": [shipment_json(conn, row, with_events=False) for row in rows]}

    def get_shipment(self, shipment_id):
        with self.db() as conn:
            return 200, shipment_json(conn, find_shipment(conn, shipment_id), with_events=True)

    def create_shipment(self):
        self.require_auth()
        body = self.json_body()
        fields = [text_field(body, name) for name in ("reference", "origin", "destination")]
        with self.db() as conn:
            try:
                with db.transaction(conn):
                    at = now()
                    cursor = conn.execute("INSERT INTO shipments (reference, origin, destination, status, created_at, "
                                          "updated_at) VALUES (?, ?, ?, 'created', ?, ?)", (*fields, at, at))
                    conn.execute("INSERT INTO tracking_events (shipment_id, status, location, created_at) "
                                 "VALUES (?, 'created', ?, ?)", (cursor.lastrowid, fields[1], at))
            except sqlite3.IntegrityError:
                raise ApiError(409, "conflict", f"a shipment with reference '{fields[0]}' already exists") from None
            return 201, shipment_json(conn, find_shipment(conn, str(cursor.lastrowid)), with_events=True)

    def add_event(self, shipment_id):
        self.require_auth()
        body = self.json_body()
        status = body.get("status")
        if status not in TRANSITIONS:
            raise ApiError(400, "invalid_field", f"field 'status' must be one of {', '.join(TRANSITIONS)}")
        location = text_field(body, "location", required=False)
        with self.db() as conn:
            with db.transaction(conn):
                current = find_shipment(conn, shipment_id)["status"]
                if status not in TRANSITIONS[current]:
                    raise ApiError(409, "invalid_transition", f"shipment {shipment_id} is {current}; cannot become {status}")
                at = now()
                conn.execute("INSERT INTO tracking_events (shipment_id, status, location, created_at) "
                             "VALUES (?, ?, ?, ?)", (int(shipment_id), status, location, at))
                conn.execute("UPDATE shipments SET status = ?, updated_at = ? WHERE id = ?", (status, at, int(shipment_id)))
            return 201, shipment_json(conn, find_shipment(conn, shipment_id), with_events=True)


# --- Startup -----------------------------------------------------------------

def exit_with(message: str, code: int):
    print(f"{NAME}: {message}", file=sys.stderr)
    sys.exit(code)


def load_config() -> dict:
    """Validate all required config at once; never echo a value."""
    env = os.environ
    missing = [name for name in ("PORT", "JWT_SECRET", "DATABASE_URL") if not env.get(name)]
    problems = [f"missing required config: {', '.join(missing)}"] if missing else []
    if env.get("JWT_SECRET") and len(env["JWT_SECRET"]) < 16:
        problems.append("JWT_SECRET must be at least 16 characters")
    if env.get("PORT") and not (env["PORT"].isdigit() and int(env["PORT"]) <= 65535):
        problems.append("PORT must be a number from 0 to 65535")
    if env.get("LOG_LEVEL", "info").lower() not in ("debug", "info", "warning", "error"):
        problems.append("LOG_LEVEL must be one of debug, info, warning, error")
    if env.get("DATABASE_URL"):
        try:
            db.parse_url(env["DATABASE_URL"])
        except ValueError as e:
            problems.append(str(e))
    if problems:
        exit_with("; ".join(problems), 2)
    return {"host": env.get("HOST", "127.0.0.1"), "port": int(env["PORT"]),
            "jwt_secret": env["JWT_SECRET"], "db_path": db.parse_url(env["DATABASE_URL"])}


def check_schema(db_path: str):
    try:
        with closing(db.connect(db_path)) as conn:
            missing = db.missing_migrations(conn)
    except (sqlite3.Error, ValueError) as e:
        exit_with(f"database not ready ({e}); run migrate.py first", 1)
    if missing:
        exit_with(f"database schema is not migrated (pending: {', '.join(m.name for m in missing)}); "
                  "run migrate.py first", 1)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--mint-token":
        secret = os.environ.get("JWT_SECRET", "")
        if len(secret) < 16:
            exit_with("--mint-token needs JWT_SECRET (at least 16 characters) in the environment", 2)
        print(mint_token(secret, sys.argv[2]))
        return
    if len(sys.argv) > 1:
        exit_with("usage: app.py [--mint-token SUBJECT]", 2)

    config = load_config()
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "info").upper(), handlers=[handler])
    check_schema(config["db_path"])

    server = ThreadingHTTPServer((config["host"], config["port"]), Handler)
    server.daemon_threads = False  # server_close() waits for in-flight requests
    server.stopping = threading.Event()
    server.jwt_secret, server.db_path = config["jwt_secret"], config["db_path"]

    def stop(signum, frame):
        server.stopping.set()
        threading.Thread(target=server.shutdown).start()  # shutdown() blocks until serve_forever returns

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    log.info("listening", extra={"fields": {"host": host, "port": port, "version": VERSION}})
    server.serve_forever()
    log.info("shutting down: no new connections, finishing requests in flight")
    server.server_close()  # closes the listener, then joins the request threads
    log.info("stopped")


if __name__ == "__main__":
    main()
