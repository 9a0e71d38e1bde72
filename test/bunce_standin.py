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
  POST /control/script    {"customer": KEY, "steps": [...]}  steps for that customer's requests only
  GET  /control/requests?since=SEQ&customer=KEY   recorded trigger requests with seq > SEQ
                          (of that customer only, if given)
  GET  /control/stats     counters (received, by_status, delivered, duplicates, ...)
  POST /control/reset     clear records, stats, scripts (per customer too) and rate-limit blocks
  POST /control/config    {"api_key", "rate_limit", "block_seconds", "events": [uuid, ...],
                           "catalog": [{id, name, description, parameters}, ...],
                           "catalog_page_size": N, "catalog_status": S | null}
  GET  /v1/events?per_page=N&cursor=C, GET /v1/events/{id}   the catalog, as Bunce serves it
                          (cursor pages; catalog_status answers instead when set); a trigger
                          of a catalog event without a required parameter is answered 422
  GET  /control/health    {"ok": true}

This file is the HTTP/1.1 server and the command line; Bunce's rules, the records, the
fault script and the control API are in bunce_rules.py beside it (read its docstring for
what the numbers mean). Standard library only; a bare asyncio.Protocol keeps it fast
enough for thousands of keep-alive requests per second on one core.
"""

import argparse
import asyncio
import http
import json
import os
import re
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bunce_rules, from any cwd
from bunce_rules import Bunce, SUCCESS_BODY, fail_body  # noqa: E402

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
PAUSE_BUFFER_BYTES = 1024 * 1024
DIGITS_RE = re.compile(r"[0-9]{1,12}")


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


class Request:
    __slots__ = ("method", "target", "headers", "body", "keep_alive", "length_missing")


class Connection(asyncio.Protocol):
    """One client connection: parses pipelined requests and answers them strictly in order.

    While an answer is pending (delayed or hung) further input is only buffered, so a
    pipelined request can never overtake the one before it.
    """

    def __init__(self, bunce, conns):
        self.bunce = bunce
        self.conns = conns        # the server's open connections, to abort at shutdown
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
        self.conns.add(self)

    def connection_lost(self, exc):
        self.closing = True
        self.conns.discard(self)
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
        self.transport.write(build_response(status, fail_body(message), False))
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

    def dispatch(self, req):
        answer, delay = self.bunce.handle(self.ip, req.method, req.target, req.headers,
                                          req.body, req.length_missing)
        if delay:
            # Answer later without stalling other connections; this one waits (in order).
            self.busy = True
            self.timer = asyncio.get_running_loop().call_later(
                delay / 1000.0, self.perform, answer, req.keep_alive, True)
        else:
            self.perform(answer, req.keep_alive, False)

    def perform(self, answer, keep_alive, resume):
        """Carry out an answer; resume=True (from a timer) goes on with buffered requests."""
        self.timer = None
        if self.closing:
            return
        if answer[0] == "drop":
            self.buf.clear()
            self.transport.close()
            self.closing = True
        elif answer[0] == "hang":
            self.hung = True   # stay busy for good; the client has to give up
            self.buf.clear()
        else:
            status, body, headers = answer
            self.send(CANNED_SUCCESS[keep_alive] if body is SUCCESS_BODY and status == 200
                      and not headers else build_response(status, body, keep_alive, headers),
                      keep_alive)
            self.busy = False
            if resume:  # called synchronously, process() is already looping
                self.process()


def write_port_file(path, port):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)  # atomic: a waiting caller never sees a half-written file


async def serve(args):
    bunce = Bunce(args.api_key, args.rate_limit, args.block_seconds, args.log)
    conns = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(bunce, conns), "127.0.0.1", args.port,
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
    for conn in list(conns):  # hung and idle keep-alive connections too
        conn.transport.abort()
    await server.wait_closed()
    bunce.close()
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
