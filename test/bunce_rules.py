"""Bunce's side of the stand-in (test/bunce_standin.py serves it over HTTP).

What the Bunce API answers and why: the secret key in X-Authorization, the per-IP rate limit
with a block, the payload rules, the silent dropping of timestamps not written as
YYYY-MM-DDTHH:MM:SSZ, the records and counters of every trigger request, the fault script, and
the /control/ API that reads and drives all of that. No sockets here: Bunce.handle() takes a
parsed request and says what to answer.

Semantics worth knowing when reading the numbers:
  * A scripted status/drop/hang stands in front of the API: it skips the rate limit, auth
    and validation. {"pass": true} (or an empty script) gets Bunce's normal behaviour.
  * Scripts per customer: POST /control/script with "customer": KEY queues steps (appended,
    like the global script) for the requests of that customer only, one step per request in
    arrival order. The customer of a request is its ordering key (customer_key): the payload's
    customer.customer_id (an integer 42 is the customer "42"), else customer.email, else
    email; compared exactly as strings. While a customer has steps pending, its requests take
    them and leave the global script to the others; then they share the global script again.
    "every" is global only (counted over all requests, customer-scripted ones too): it is
    refused together with "customer". GET /control/requests?customer=KEY lists that
    customer's requests in arrival order; each record has "customer" (the key, or null).
  * Exceeding the rate limit blocks the IP for block-seconds; the block replaces the 60 s
    window, so once it ends the client starts afresh.
  * delivered = 2xx answers whose body has "success": true; unique_idempotency_keys =
    distinct Idempotency-Key values received; duplicates = requests whose key had already
    had a 2xx answer; skipped_timestamps = total over all received trigger requests.
  * The X-Authorization value is never stored, logged or printed ("<redacted>", auth_ok).
"""

import base64
import collections
import json
import math
import re
import time
from urllib.parse import parse_qs, urlsplit

TRIGGER_PATH = "/v1/events/trigger"
WINDOW_SECONDS = 60.0

UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
LOOKS_LIKE_DATETIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
BUNCE_TIMESTAMP_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
EMAIL_BAD_CHARS = set('<>(),;\\"\x7f')


def fail_body(message):
    return {"success": False, "message": message}


SUCCESS_BODY = {"success": True, "message": "Event triggered successfully", "data": True}
UNAUTHORIZED_BODY = fail_body("Unauthorized: invalid or missing secret key")
RATE_LIMITED_BODY = fail_body("You have reached maximum request limit.")
NOT_FOUND = (404, fail_body("Not found"), [])


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


def id_text(value):
    """value as a customer key: a non-empty string, an integer as its digits, else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) and value else None


def customer_key(doc):
    """The customer (ordering key) of a parsed trigger body, or None: payload.customer's
    customer_id, else its email, else payload.email."""
    payload = doc.get("payload") if isinstance(doc, dict) else None
    if not isinstance(payload, dict):
        return None
    customer = payload.get("customer")
    customer = customer if isinstance(customer, dict) else {}
    key = id_text(customer.get("customer_id"))
    if key is not None:
        return key
    for email in (customer.get("email"), payload.get("email")):
        if isinstance(email, str) and email:
            return email
    return None


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


class Bunce:
    """Configuration, records, counters and the fault script, shared by all connections.

    handle() answers one request with (answer, delay_ms): answer is (status, body, headers),
    ("drop",) or ("hang",); body is JSON-encodable, or str/bytes sent as they are.
    """

    def __init__(self, api_key, rate_limit, block_seconds, log_path=None):
        self.api_key = api_key
        self.rate_limit = rate_limit
        self.block_seconds = block_seconds
        self.events = set()
        self.catalog = []             # event definitions served by GET /v1/events
        self.catalog_page_size = 20   # Bunce's default page
        self.catalog_status = None    # an HTTP status GET /v1/events answers instead, or None
        self.log = open(log_path, "a", encoding="utf-8") if log_path else None
        self.reset()

    def close(self):
        if self.log:
            self.log.close()

    def reset(self):
        self.seq = 0
        self.records = []
        self.script = collections.deque()
        self.customer_scripts = {}           # customer key -> deque of steps (never empty)
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
        self.catalog_requests = 0

    # -- the API ----------------------------------------------------------------------
    def handle(self, ip, method, target, headers, body, length_missing):
        """What to answer to one request (see the class); body is the raw request body."""
        path = urlsplit(target).path
        if path == TRIGGER_PATH and method == "POST":
            return self.trigger(ip, method, target, headers, body, length_missing)
        if path.startswith("/v1/"):
            retry = self.rate_gate(ip, time.time())
            if retry is not None:
                return (429, RATE_LIMITED_BODY, [("Retry-After", retry)]), 0
            if path == TRIGGER_PATH:
                return (405, fail_body("Method not allowed"), [("Allow", "POST")]), 0
            if method == "GET" and (path == "/v1/events" or path.startswith("/v1/events/")):
                return self.events_api(target, path, headers), 0
            return NOT_FOUND, 0
        if path.startswith("/control/"):
            return self.control(method, target, path, body), 0
        return NOT_FOUND, 0

    def definition(self, event_id):
        """The catalog's definition of event_id, or None."""
        if not isinstance(event_id, str):
            return None
        return next((e for e in self.catalog if e["id"].lower() == event_id.lower()), None)

    def events_api(self, target, path, headers):
        """GET /v1/events (cursor pages) and GET /v1/events/{id}, from the catalog."""
        self.catalog_requests += 1
        if dict(headers).get("x-authorization") != self.api_key:
            return 401, UNAUTHORIZED_BODY, []
        if self.catalog_status is not None:
            return self.catalog_status, fail_body(f"scripted {self.catalog_status}"), []
        if path != "/v1/events":
            wanted = path[len("/v1/events/"):].lower()
            for e in self.catalog:
                if e["id"].lower() == wanted:
                    return 200, {"success": True, "message": "Event fetched", "data": e}, []
            return 404, fail_body("Event not found"), []
        query = parse_qs(urlsplit(target).query)
        try:
            per_page = min(int(query.get("per_page", ["20"])[0]), self.catalog_page_size)
            start = int(base64.urlsafe_b64decode(query["cursor"][0]).decode()) if "cursor" in query else 0
        except (ValueError, UnicodeDecodeError):
            return 400, fail_body("Invalid cursor"), []
        per_page = max(per_page, 1)
        page = self.catalog[start:start + per_page]
        more = start + per_page < len(self.catalog)

        def cursor(offset):
            return base64.urlsafe_b64encode(str(offset).encode()).decode()
        meta = {"has_next_page": more, "has_prev_page": start > 0,
                "next_page_cursor": cursor(start + per_page) if more else None,
                "prev_page_cursor": cursor(max(start - per_page, 0)) if start > 0 else None,
                "per_page": per_page}
        return 200, {"success": True, "message": "Events fetched", "data": page, "meta": meta}, []

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

    def trigger(self, ip, method, target, req_headers, raw, length_missing):
        """POST /v1/events/trigger: record it, then the scripted fault or Bunce's answer."""
        now = time.time()
        self.seq += 1
        headers = dict(req_headers)
        auth_ok = headers.get("x-authorization") == self.api_key
        if "x-authorization" in headers:
            headers["x-authorization"] = "<redacted>"
        text = raw.decode("utf-8", "replace")
        try:
            doc = json.loads(text) if text else None
        except ValueError:
            doc = None
        skipped = skipped_timestamps(doc.get("payload")) if isinstance(doc, dict) else []
        definition = self.definition(doc.get("event_id") if isinstance(doc, dict) else None)
        if definition is not None and isinstance(doc.get("payload"), dict):
            # A timestamp parameter in any other form than Bunce's is skipped, whatever it looks like.
            for p in definition.get("parameters") or []:
                value = doc["payload"].get(p.get("name"))
                if (str(p.get("type", "")).lower() == "timestamp" and value is not None
                        and not (isinstance(value, str) and BUNCE_TIMESTAMP_RE.fullmatch(value))
                        and p["name"] not in skipped):
                    skipped.append(p["name"])
        customer = customer_key(doc)
        rec = {"seq": self.seq, "received_at": now, "client": ip, "method": method,
               "path": target, "headers": headers, "auth_ok": auth_ok, "body": text,
               "json": doc, "status": None, "skipped_timestamps": skipped,
               "customer": customer}
        self.records.append(rec)
        self.skipped += len(skipped)
        self.note_received(ip, now)

        step = self.next_step(customer)
        delay = step.get("delay_ms", 0)
        if self.every and self.seq % self.every[0] == 0:
            delay += self.every[1]
        if delay:
            rec["delay_ms"] = delay

        if step.get("drop"):
            rec["fault"] = "drop"
            self.dropped += 1
            self.settle(rec, None, None)
            return ("drop",), delay
        if step.get("hang"):
            rec["fault"] = "hang"
            self.hung += 1
            self.settle(rec, None, None)
            return ("hang",), delay
        if "status" in step:
            # A scripted answer stands in front of the API: no rate limit, auth or validation.
            rec["fault"] = "status"
            status = step["status"]
            body = step.get("body")
            if body is None:
                body = SUCCESS_BODY if 200 <= status < 300 else fail_body(f"scripted {status}")
            extra = [("Retry-After", step["retry_after"])] if "retry_after" in step else []
        else:
            status, body, extra = self.normal(ip, doc, text, auth_ok, length_missing, now)
        self.settle(rec, status, body)
        return (status, body, extra), delay

    def next_step(self, customer):
        """The customer's next scripted step if it has one, else the global script's."""
        queue = self.customer_scripts.get(customer)
        if queue:
            step = queue.popleft()
            if not queue:
                del self.customer_scripts[customer]
            return step
        return self.script.popleft() if self.script else {"pass": True}

    def normal(self, ip, doc, text, auth_ok, length_missing, now):
        """What Bunce itself would answer: (status, body, extra headers)."""
        retry = self.rate_gate(ip, now)
        if retry is not None:
            return 429, RATE_LIMITED_BODY, [("Retry-After", retry)]
        if length_missing:
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
        definition = self.definition(event_id)
        if (self.events or self.catalog) and event_id.lower() not in self.events and definition is None:
            return 404, fail_body("Event not found"), []
        if definition is not None:
            payload = doc.get("payload")
            for p in definition.get("parameters") or []:
                if p.get("required") and (not isinstance(payload, dict) or payload.get(p["name"]) is None):
                    return 422, fail_body(f"{p['name']} is required and must be present"), []
        return 200, SUCCESS_BODY, []

    # -- the control API --------------------------------------------------------------
    def control(self, method, target, path, raw):
        """/control/...: (status, body, headers)."""
        routes = {"/control/script": "POST", "/control/requests": "GET", "/control/stats": "GET",
                  "/control/reset": "POST", "/control/config": "POST", "/control/health": "GET"}
        want = routes.get(path)
        if want is None:
            return 404, {"ok": False, "error": "unknown control endpoint"}, []
        if method != want:
            return 405, {"ok": False, "error": f"use {want}"}, [("Allow", want)]
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return 400, {"ok": False, "error": "body is not valid JSON"}, []
        try:
            if path == "/control/health":
                result = {"ok": True}
            elif path == "/control/stats":
                result = self.stats()
            elif path == "/control/requests":
                query = parse_qs(urlsplit(target).query, keep_blank_values=True)
                since = query.get("since", ["0"])[0] or "0"
                if not re.fullmatch(r"-?[0-9]+", since):
                    raise ValueError("since must be an integer")
                since = max(0, int(since))
                # seq n is records[n - 1]: seq restarts at 1 after every reset.
                records = self.records[since:]
                if "customer" in query:
                    customer = query["customer"][0]
                    records = [r for r in records if r["customer"] == customer]
                result = {"requests": records}
            elif path == "/control/reset":
                self.reset()
                result = {"ok": True}
            elif path == "/control/config":
                result = self.configure(body)
            else:
                result = self.set_script(body)
        except ValueError as e:
            return 400, {"ok": False, "error": str(e)}, []
        return 200, result, []

    def stats(self):
        return {"received": self.seq, "by_status": dict(self.by_status),
                "delivered": self.delivered, "unique_idempotency_keys": len(self.keys_seen),
                "duplicates": self.duplicates, "skipped_timestamps": self.skipped,
                "rate_limit_violations": self.violations, "max_in_any_60s_window": self.max_window,
                "dropped": self.dropped, "hung": self.hung, "script_pending": len(self.script),
                "catalog_requests": self.catalog_requests,
                "customer_script_pending": {k: len(q) for k, q in self.customer_scripts.items()}}

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
        catalog = cfg.get("catalog", [])
        if not isinstance(catalog, list) or not all(
                isinstance(e, dict) and isinstance(e.get("id"), str) and UUID_RE.fullmatch(e["id"])
                and isinstance(e.get("name"), str) and isinstance(e.get("parameters", []), list)
                for e in catalog):
            raise ValueError("catalog must be a list of events {id, name, description, parameters}")
        page_size = cfg.get("catalog_page_size", 20)
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ValueError("catalog_page_size must be a positive integer")
        catalog_status = cfg.get("catalog_status")
        if catalog_status is not None and (isinstance(catalog_status, bool) or not isinstance(catalog_status, int)):
            raise ValueError("catalog_status must be an HTTP status or null")
        if "catalog" in cfg:
            self.catalog = catalog
        if "catalog_page_size" in cfg:
            self.catalog_page_size = page_size
        if "catalog_status" in cfg:
            self.catalog_status = catalog_status
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

    def set_script(self, body):
        if not isinstance(body, dict):
            raise ValueError("script body must be an object")
        customer = None
        if "customer" in body:
            customer = id_text(body["customer"])
            if customer is None:
                raise ValueError("customer must be a non-empty string (or an integer)")
            if "every" in body:
                raise ValueError("every applies to all requests: send it without customer")
        steps = body.get("steps", [])
        if not isinstance(steps, list):
            raise ValueError("steps must be a list")
        for step in steps:
            check_step(step)
        every = self.every
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
        self.every = every
        result = {"ok": True}
        if customer is None:
            self.script.extend(steps)
            result["queued"] = len(self.script)
        else:
            if steps:
                self.customer_scripts.setdefault(customer, collections.deque()).extend(steps)
            result["customer"] = customer
            result["queued"] = len(self.customer_scripts.get(customer, ()))
        result["every"] = {"nth": every[0], "delay_ms": every[1]} if every else None
        return result
