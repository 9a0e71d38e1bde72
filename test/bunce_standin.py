#!/usr/bin/python3
"""A local stand-in for the Bunce HTTP API (POST /v1/events/trigger).

Used by the TAP tests, the demo and the benchmarks. It applies Bunce's rules
(secret key in X-Authorization, per-IP rate limit with a block, payload shape,
silent dropping of timestamps not written as YYYY-MM-DDTHH:MM:SSZ), records
every trigger request, and can be scripted to misbehave (odd statuses, delays,
dropped or hung connections) through an unauthenticated /control/ API:

  POST /control/script    {"steps": [step, ...], "every": {"nth": N, "delay_ms": MS} | null}
                          step: {"status": S, "body": B, "retry_after": R, "delay_ms": MS}
                                {"drop": true} | {"hang": true} | {"pass": true, "delay_ms": MS}
  GET  /control/requests?since=SEQ   recorded trigger requests with seq > SEQ
  GET  /control/stats     counters (received, by_status, delivered, duplicates, ...)
  POST /control/reset     clear records, stats, script and rate-limit blocks
  POST /control/config    {"api_key", "rate_limit", "block_seconds", "events": [uuid, ...]}
  GET  /control/health    {"ok": true}

Semantics worth knowing when reading the numbers:
  * A scripted status/drop/hang stands in front of the API: it skips the rate limit, auth
    and validation. {"pass": true} (or an empty script) gets Bunce's normal behaviour.
  * Exceeding the rate limit blocks the IP for block-seconds; the block replaces the 60 s
    window, so once it ends the client starts afresh.
  * delivered = 2xx answers whose body has "success": true; unique_idempotency_keys =
    distinct Idempotency-Key values received; duplicates = requests whose key had already
    had a 2xx answer; skipped_timestamps = total over all received trigger requests.
  * The X-Authorization value is never stored, logged or printed ("<redacted>", auth_ok).

Standard library only; a bare asyncio.Protocol keeps it fast enough for
thousands of keep-alive requests per second on one core.
"""

import argparse
import asyncio
import collections
import http
import json
import math
import os
import re
import signal
import sys
import time
from urllib.parse import parse_qs, urlsplit

TRIGGER_PATH = "/v1/events/trigger"
WINDOW_SECONDS = 60.0
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
PAUSE_BUFFER_BYTES = 1024 * 1024

UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
LOOKS_LIKE_DATETIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
BUNCE_TIMESTAMP_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
DIGITS_RE = re.compile(r"[0-9]{1,12}")
EMAIL_BAD_CHARS = set('<>(),;\\"\x7f')


def fail_body(message):
    return {"success": False, "message": message}


SUCCESS_BODY = {"success": True, "message": "Event triggered successfully", "data": True}
UNAUTHORIZED_BODY = fail_body("Unauthorized: invalid or missing secret key")
RATE_LIMITED_BODY = fail_body("You have reached maximum request limit.")


def dumps(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def reason(status):
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Status"


def build_response(status, body, keep_alive, headers=()):
    """Full HTTP/1.1 response bytes; body is JSON-encoded unless already str/bytes."""
    if isinstance(body, str):
        data = body.encode()
    elif isinstance(body, (bytes, bytearray)):
        data = bytes(body)
    else:
        data = dumps(body)
    lines = [f"HTTP/1.1 {status} {reason(status)}",
             "Server: bunce-standin",
             "Content-Type: application/json",
             f"Content-Length: {len(data)}",
             "Connection: keep-alive" if keep_alive else "Connection: close"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data


# The hot path answers most requests with one of these; building them once matters at 10k req/s.
CANNED_SUCCESS = {ka: build_response(200, SUCCESS_BODY, ka) for ka in (True, False)}


def is_valid_email(e):
    """Same pragmatic check as the extension (src/core/payload.cpp): local@domain.tld."""
    if not isinstance(e, str) or not 3 <= len(e) <= 254:
        return False
    at = e.find("@")
    if at <= 0 or at > 64 or e.find("@", at + 1) != -1:
        return False
    domain = e[at + 1:]
    dot = domain.rfind(".")
    if dot <= 0 or dot + 1 >= len(domain) or domain[0] == "-" or ".." in domain:
        return False
    return not any(c <= " " or c in EMAIL_BAD_CHARS for c in e)


def validate_payload(payload):
    """None if Bunce would accept the payload, else the 422 message."""
    if not isinstance(payload, dict):
        return "payload is required and must be an object"
    email = payload.get("email")
    if email is not None and not is_valid_email(email):
        return "email must be a valid email address"
    customer = payload.get("customer")
    if customer is None:
        return None if email is not None else "email is required and must be present"
    if not isinstance(customer, dict):
        return "customer must be an object"
    cid = customer.get("customer_id")
    if cid is not None and (not isinstance(cid, str) or not cid):
        return "customer.customer_id must be a non-empty string"
    cemail = customer.get("email")
    if cemail is not None and not is_valid_email(cemail):
        return "customer.email must be a valid email address"
    if cid is None and cemail is None:
        return "customer.customer_id or customer.email is required"
    for key in ("first_name", "last_name", "phone_no"):
        if key in customer and not isinstance(customer[key], str):
            return f"customer.{key} must be a string"
    if "devices" in customer:
        devices = customer["devices"]
        if not isinstance(devices, list):
            return "customer.devices must be an array"
        for d in devices:
            if not isinstance(d, dict):
                return "customer.devices must contain objects"
            for key in ("device_type", "device_token"):
                if not isinstance(d.get(key), str):
                    return f"customer.devices.*.{key} is required and must be a string"
    return None


def skipped_timestamps(payload):
    """Keys whose values look like date-times but not in Bunce's one accepted form."""
    if not isinstance(payload, dict):
        return []
    found = []
    scopes = [("", payload)]
    if isinstance(payload.get("customer"), dict):
        scopes.append(("customer.", payload["customer"]))
    for prefix, obj in scopes:
        for key, value in obj.items():
            if (isinstance(value, str) and LOOKS_LIKE_DATETIME_RE.match(value)
                    and not BUNCE_TIMESTAMP_RE.fullmatch(value)):
                found.append(prefix + key)
    return found


def check_step(step):
    """Raise ValueError unless step is a well-formed script step."""
    if not isinstance(step, dict):
        raise ValueError("each step must be an object")
    kinds = [k for k in ("status", "drop", "hang", "pass") if k in step]
    if len(kinds) != 1:
        raise ValueError("each step needs exactly one of status, drop, hang, pass")
    status = step.get("status")
    if "status" in step and (not isinstance(status, int) or not 100 <= status <= 599):
        raise ValueError("status must be an integer 100..599")
    delay = step.get("delay_ms", 0)
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
        raise ValueError("delay_ms must be a non-negative number")
    retry = step.get("retry_after")
    if retry is not None and (isinstance(retry, bool) or not isinstance(retry, (int, str))):
        raise ValueError("retry_after must be an integer or a string")


class State:
    """Configuration, records, counters and the fault script, shared by all connections."""

    def __init__(self, args):
        self.api_key = args.api_key
        self.rate_limit = args.rate_limit
        self.block_seconds = args.block_seconds
        self.events = set()
        self.log = open(args.log, "a", encoding="utf-8") if args.log else None
        self.conns = set()
        self.reset()

    def reset(self):
        self.seq = 0
        self.records = []
        self.script = collections.deque()
        self.every = None                    # (nth, delay_ms) or None
        self.blocked = {}                    # ip -> unix time the block ends
        self.rate_windows = {}               # ip -> deque of admitted request times
        self.recv_windows = {}               # ip -> deque of all trigger request times
        self.by_status = collections.Counter()
        self.delivered = 0
        self.keys_seen = set()
        self.keys_ok = set()
        self.duplicates = 0
        self.skipped = 0
        self.violations = 0
        self.max_window = 0
        self.dropped = 0
        self.hung = 0

    def rate_gate(self, ip, now):
        """None if the request may proceed, else the Retry-After seconds for a 429."""
        if self.rate_limit <= 0:
            return None
        until = self.blocked.get(ip)
        if until is not None:
            if now < until:
                self.violations += 1
                return max(1, math.ceil(until - now))
            del self.blocked[ip]
        win = self.rate_windows.setdefault(ip, collections.deque())
        cutoff = now - WINDOW_SECONDS
        while win and win[0] <= cutoff:
            win.popleft()
        if len(win) >= self.rate_limit:
            self.violations += 1
            self.blocked[ip] = now + self.block_seconds
            # The block replaces the window: once it ends the client starts with a clean slate,
            # so a short --block-seconds in tests really does let traffic through again.
            win.clear()
            return math.ceil(self.block_seconds)
        win.append(now)
        return None

    def note_received(self, ip, now):
        win = self.recv_windows.setdefault(ip, collections.deque())
        win.append(now)
        cutoff = now - WINDOW_SECONDS
        while win[0] <= cutoff:
            win.popleft()
        if len(win) > self.max_window:
            self.max_window = len(win)

    def settle(self, rec, status, body):
        """Count an answer (decided now, maybe sent later) and log the record."""
        rec["status"] = status
        if status is not None:
            self.by_status[str(status)] += 1
            ok = 200 <= status < 300
            if ok and isinstance(body, dict) and body.get("success") is True:
                self.delivered += 1
            key = rec["headers"].get("idempotency-key")
            if key is not None:
                self.keys_seen.add(key)
                if key in self.keys_ok:
                    self.duplicates += 1
                if ok:
                    self.keys_ok.add(key)
        if self.log:
            self.log.write(json.dumps(rec, ensure_ascii=False) + "\n")
            self.log.flush()

    def stats(self):
        return {"received": self.seq, "by_status": dict(self.by_status),
                "delivered": self.delivered, "unique_idempotency_keys": len(self.keys_seen),
                "duplicates": self.duplicates, "skipped_timestamps": self.skipped,
                "rate_limit_violations": self.violations, "max_in_any_60s_window": self.max_window,
                "dropped": self.dropped, "hung": self.hung, "script_pending": len(self.script)}

    def configure(self, cfg):
        if not isinstance(cfg, dict):
            raise ValueError("config must be an object")
        # Validate everything before applying anything, so a bad request changes nothing.
        if "api_key" in cfg and not isinstance(cfg["api_key"], str):
            raise ValueError("api_key must be a string")
        rl, bs = cfg.get("rate_limit", 0), cfg.get("block_seconds", 0)
        if isinstance(rl, bool) or not isinstance(rl, int) or rl < 0:
            raise ValueError("rate_limit must be a non-negative integer")
        if isinstance(bs, bool) or not isinstance(bs, (int, float)) or bs < 0:
            raise ValueError("block_seconds must be a non-negative number")
        events = cfg.get("events", [])
        if not isinstance(events, list) or not all(
                isinstance(e, str) and UUID_RE.fullmatch(e) for e in events):
            raise ValueError("events must be a list of UUID strings")
        if "api_key" in cfg:
            self.api_key = cfg["api_key"]
        if "rate_limit" in cfg:
            self.rate_limit = rl
        if "block_seconds" in cfg:
            self.block_seconds = bs
        if "events" in cfg:
            self.events = {e.lower() for e in events}
        return {"ok": True, "rate_limit": self.rate_limit, "block_seconds": self.block_seconds,
                "events": sorted(self.events)}


class Request:
    __slots__ = ("method", "target", "headers", "body", "keep_alive", "length_missing")


class Connection(asyncio.Protocol):
    """One client connection: parses pipelined requests and answers them strictly in order.

    While an answer is pending (delayed or hung) further input is only buffered, so a
    pipelined request can never overtake the one before it.
    """

    def __init__(self, state):
        self.state = state
        self.transport = None
        self.ip = "?"
        self.buf = bytearray()
        self.head = None          # parsed Request still waiting for its body
        self.busy = False         # an answer is pending
        self.hung = False
        self.closing = False
        self.paused = False
        self.timer = None

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if peer else "?"
        self.state.conns.add(self)

    def connection_lost(self, exc):
        self.closing = True
        self.state.conns.discard(self)
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data):
        if self.closing or self.hung:
            return  # a hung connection keeps reading only to notice the client leaving
        self.buf += data
        if not self.busy:
            self.process()
        elif len(self.buf) > PAUSE_BUFFER_BYTES and not self.paused:
            self.transport.pause_reading()
            self.paused = True

    # -- parsing ----------------------------------------------------------------------
    def process(self):
        while not self.busy and not self.closing:
            req = self.parse_one()
            if req is None:
                break
            self.dispatch(req)
        if self.paused and not self.busy and not self.closing:
            self.transport.resume_reading()
            self.paused = False

    def reject(self, status, message):
        """Answer a request we cannot parse and close: we no longer know where the next begins."""
        self.transport.write(build_response(status, {"success": False, "message": message}, False))
        self.transport.close()
        self.closing = True

    def parse_one(self):
        if self.head is None:
            while self.buf[:2] == b"\r\n":  # tolerate stray CRLF between requests
                del self.buf[:2]
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD_BYTES:
                    self.reject(431, "request head too large")
                return None
            lines = self.buf[:end].decode("latin-1").split("\r\n")
            del self.buf[:end + 4]
            parts = lines[0].split(" ")
            if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
                self.reject(400, "malformed request line")
                return None
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep or not name or name.strip() != name:
                    self.reject(400, "malformed header line")
                    return None
                name, value = name.lower(), value.strip()
                if name in headers:
                    if name == "content-length" and headers[name] != value:
                        self.reject(400, "conflicting Content-Length headers")
                        return None
                    value = headers[name] + ", " + value
                headers[name] = value
            req = Request()
            req.method, req.target, req.headers = parts[0], parts[1], headers
            conn = headers.get("connection", "").lower()
            req.keep_alive = ("close" not in conn if parts[2] == "HTTP/1.1"
                              else "keep-alive" in conn)
            if "transfer-encoding" in headers:
                self.reject(411, "Transfer-Encoding is not supported; send Content-Length")
                return None
            cl = headers.get("content-length")
            if cl is not None and not DIGITS_RE.fullmatch(cl.split(",")[0].strip()):
                self.reject(400, "malformed Content-Length")
                return None
            req.body = int(cl.split(",")[0]) if cl is not None else 0  # body length for now
            req.length_missing = cl is None and req.method in ("POST", "PUT", "PATCH")
            if req.body > MAX_BODY_BYTES:
                self.reject(413, "request body too large")
                return None
            # libcurl sends "Expect: 100-continue" for larger POSTs and then waits up to a
            # second for this interim answer before sending the body.
            if "100-continue" in headers.get("expect", "").lower() and len(self.buf) < req.body:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.head = req
        req = self.head
        if len(self.buf) < req.body:
            return None
        length, self.head = req.body, None
        req.body = bytes(self.buf[:length])
        del self.buf[:length]
        return req

    # -- answering --------------------------------------------------------------------
    def send(self, raw, keep_alive):
        if self.closing:
            return
        self.transport.write(raw)
        if not keep_alive:
            self.transport.close()
            self.closing = True

    def answer(self, req, status, body, headers=()):
        self.send(build_response(status, body, req.keep_alive, headers), req.keep_alive)

    def dispatch(self, req):
        path = urlsplit(req.target).path
        if path == TRIGGER_PATH and req.method == "POST":
            self.trigger(req)
        elif path.startswith("/v1/"):
            retry = self.state.rate_gate(self.ip, time.time())
            if retry is not None:
                self.answer(req, 429, RATE_LIMITED_BODY, [("Retry-After", retry)])
            elif path == TRIGGER_PATH:
                self.answer(req, 405, fail_body("Method not allowed"), [("Allow", "POST")])
            else:
                self.answer(req, 404, fail_body("Not found"))
        elif path.startswith("/control/"):
            self.control(req, path)
        else:
            self.answer(req, 404, fail_body("Not found"))

    def trigger(self, req):
        st = self.state
        now = time.time()
        st.seq += 1
        headers = dict(req.headers)
        auth_ok = headers.get("x-authorization") == st.api_key
        if "x-authorization" in headers:
            headers["x-authorization"] = "<redacted>"
        text = req.body.decode("utf-8", "replace")
        try:
            doc = json.loads(text) if text else None
        except ValueError:
            doc = None
        skipped = skipped_timestamps(doc.get("payload")) if isinstance(doc, dict) else []
        rec = {"seq": st.seq, "received_at": now, "client": self.ip, "method": req.method,
               "path": req.target, "headers": headers, "auth_ok": auth_ok, "body": text,
               "json": doc, "status": None, "skipped_timestamps": skipped}
        st.records.append(rec)
        st.skipped += len(skipped)
        st.note_received(self.ip, now)

        step = st.script.popleft() if st.script else {"pass": True}
        delay = step.get("delay_ms", 0)
        if st.every and st.seq % st.every[0] == 0:
            delay += st.every[1]
        if delay:
            rec["delay_ms"] = delay

        if step.get("drop"):
            rec["fault"] = "drop"
            st.dropped += 1
            st.settle(rec, None, None)
            action = ("drop",)
        elif step.get("hang"):
            rec["fault"] = "hang"
            st.hung += 1
            st.settle(rec, None, None)
            action = ("hang",)
        elif "status" in step:
            # A scripted answer stands in front of the API: no rate limit, auth or validation.
            rec["fault"] = "status"
            status = step["status"]
            body = step.get("body")
            if body is None:
                body = SUCCESS_BODY if 200 <= status < 300 else fail_body(f"scripted {status}")
            extra = [("Retry-After", step["retry_after"])] if "retry_after" in step else []
            st.settle(rec, status, body)
            action = ("raw", build_response(status, body, req.keep_alive, extra))
        else:
            status, body, extra = self.normal(req, doc, text, auth_ok, now)
            st.settle(rec, status, body)
            raw = (CANNED_SUCCESS[req.keep_alive] if body is SUCCESS_BODY
                   else build_response(status, body, req.keep_alive, extra))
            action = ("raw", raw)

        if delay:
            # Answer later without stalling other connections; this one waits (in order).
            self.busy = True
            self.timer = asyncio.get_running_loop().call_later(
                delay / 1000.0, self.perform, action, req.keep_alive, True)
        else:
            self.perform(action, req.keep_alive, False)

    def normal(self, req, doc, text, auth_ok, now):
        """What Bunce itself would answer: (status, body, extra headers)."""
        st = self.state
        retry = st.rate_gate(self.ip, now)
        if retry is not None:
            return 429, RATE_LIMITED_BODY, [("Retry-After", retry)]
        if req.length_missing:
            return 411, fail_body("Content-Length required"), []
        if not auth_ok:
            return 401, UNAUTHORIZED_BODY, []
        if doc is None and text.strip() != "null":
            return 400, fail_body("Malformed JSON body"), []
        if not isinstance(doc, dict):
            return 422, fail_body("ID param is not valid UUID"), []
        event_id = doc.get("event_id")
        if not isinstance(event_id, str) or not UUID_RE.fullmatch(event_id):
            return 422, fail_body("ID param is not valid UUID"), []
        message = validate_payload(doc.get("payload"))
        if message:
            return 422, fail_body(message), []
        if st.events and event_id.lower() not in st.events:
            return 404, fail_body("Event not found"), []
        return 200, SUCCESS_BODY, []

    def perform(self, action, keep_alive, resume):
        """Carry out an answer; resume=True (from a timer) goes on with buffered requests."""
        self.timer = None
        if self.closing:
            return
        if action[0] == "drop":
            self.buf.clear()
            self.transport.close()
            self.closing = True
        elif action[0] == "hang":
            self.hung = True   # stay busy for good; the client has to give up
            self.buf.clear()
        else:
            self.send(action[1], keep_alive)
            self.busy = False
            if resume:  # called synchronously, process() is already looping
                self.process()

    # -- control API ------------------------------------------------------------------
    def control(self, req, path):
        st = self.state
        routes = {"/control/script": "POST", "/control/requests": "GET", "/control/stats": "GET",
                  "/control/reset": "POST", "/control/config": "POST", "/control/health": "GET"}
        want = routes.get(path)
        if want is None:
            return self.answer(req, 404, {"ok": False, "error": "unknown control endpoint"})
        if req.method != want:
            return self.answer(req, 405, {"ok": False, "error": f"use {want}"}, [("Allow", want)])
        try:
            body = json.loads(req.body) if req.body.strip() else {}
        except ValueError:
            return self.answer(req, 400, {"ok": False, "error": "body is not valid JSON"})
        try:
            if path == "/control/health":
                result = {"ok": True}
            elif path == "/control/stats":
                result = st.stats()
            elif path == "/control/requests":
                since = parse_qs(urlsplit(req.target).query).get("since", ["0"])[0]
                if not re.fullmatch(r"-?[0-9]+", since):
                    raise ValueError("since must be an integer")
                since = max(0, int(since))
                # seq n is records[n - 1]: seq restarts at 1 after every reset.
                result = {"requests": st.records[since:]}
            elif path == "/control/reset":
                st.reset()
                result = {"ok": True}
            elif path == "/control/config":
                result = st.configure(body)
            else:
                result = self.script(body)
        except ValueError as e:
            return self.answer(req, 400, {"ok": False, "error": str(e)})
        self.answer(req, 200, result)

    def script(self, body):
        st = self.state
        if not isinstance(body, dict):
            raise ValueError("script body must be an object")
        steps = body.get("steps", [])
        if not isinstance(steps, list):
            raise ValueError("steps must be a list")
        for step in steps:
            check_step(step)
        every = st.every
        if "every" in body:
            rule = body["every"]
            if rule is None:
                every = None
            else:
                nth = rule.get("nth") if isinstance(rule, dict) else None
                delay = rule.get("delay_ms", 0) if isinstance(rule, dict) else None
                if (isinstance(nth, bool) or not isinstance(nth, int) or nth < 1
                        or isinstance(delay, bool) or not isinstance(delay, (int, float))
                        or delay < 0):
                    raise ValueError('every must be {"nth": N >= 1, "delay_ms": MS >= 0} or null')
                every = (nth, delay)
        st.script.extend(steps)
        st.every = every
        return {"ok": True, "queued": len(st.script),
                "every": {"nth": every[0], "delay_ms": every[1]} if every else None}


def write_port_file(path, port):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)  # atomic: a waiting caller never sees a half-written file


async def serve(args):
    state = State(args)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(state), "127.0.0.1", args.port,
                                      reuse_address=True, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    if args.port_file:
        write_port_file(args.port_file, port)
    if not args.quiet:
        print(f"bunce stand-in listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.max_seconds > 0:
        loop.call_later(args.max_seconds, stop.set)
    await stop.wait()

    server.close()
    for conn in list(state.conns):  # hung and idle keep-alive connections too
        conn.transport.abort()
    await server.wait_closed()
    if state.log:
        state.log.close()
    if args.port_file:
        try:
            with open(args.port_file, encoding="ascii") as f:
                ours = f.read().strip() == str(port)
            if ours:
                os.unlink(args.port_file)
        except OSError:
            pass


def main():
    p = argparse.ArgumentParser(description="Local stand-in for the Bunce HTTP API.")
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0 = ephemeral)")
    p.add_argument("--port-file", help="write the bound port here (atomically) once listening")
    p.add_argument("--api-key", default="sk_test_standin", help="expected X-Authorization value")
    p.add_argument("--rate-limit", type=int, default=500,
                   help="requests per 60 s per client IP (0 = off)")
    p.add_argument("--block-seconds", type=float, default=60,
                   help="how long an IP is refused after exceeding the rate limit")
    p.add_argument("--log", help="append one JSON line per trigger request to this file")
    p.add_argument("--quiet", action="store_true", help="print nothing to stderr")
    p.add_argument("--max-seconds", type=float, default=0,
                   help="exit by itself after this many seconds (0 = run until signalled)")
    args = p.parse_args()
    if args.rate_limit < 0 or args.block_seconds < 0:
        p.error("--rate-limit and --block-seconds must not be negative")
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
