"""Schemathesis hooks: the service's rules that no OpenAPI document can state.

Loaded by scripts/test-api-fuzz.sh (`SCHEMATHESIS_HOOKS=hooks`, `PYTHONPATH=scripts/schemathesis`). Every check stays
enabled; these hooks only make the *schema-valid* (positive) requests also satisfy the
rules JSON Schema cannot express, so that a 422 for one of them is not reported as "valid
data rejected". Negative requests are sent as generated.

The rules (each also stated in words in the document):

1. A click needs a live referral code (state). The document's examples assume the example
   code exists ("create it first"): it is assigned once, before the first request. Later, a
   positive click whose code is not live (never assigned, or retired earlier in the run)
   gets a fresh code this hook assigns (`ST-HOOK-<n>`), never one schemathesis has seen,
   so that no retired code comes back to life behind schemathesis' back.
2. occurred_at is not before 1970-01-01T00:00:00Z and at most 5 minutes in the future
   (relative to now): an instant outside that range is moved into it.
3. confirmed_at is not in the future and not before the click's occurred_at (relative to
   now and to another resource): such a value is replaced by null (= now). The same for a
   reversal's reversed_at against the conversion's confirmed_at.
4. `to` must not be before `from` (a comparison of two parameters): they are swapped.
5. (page - 1) * limit <= 100000 (arithmetic over two parameters; exact in JSON Schema only
   with a 101-branch anyOf that schemathesis cannot generate from): page is lowered.
6. user_agent is limited to 1024 *bytes*, URLs to 2048 bytes, where JSON Schema's
   maxLength counts characters: a longer text is cut (user agent) or replaced (URL).

7. `tz` names a zone of the IANA database (a set the document does not enumerate): a name
   that is not one becomes one of a few real zones.
8. A time series holds at most 1,000 buckets (interval x period arithmetic) and starts no
   earlier than 1972: a longer period is shortened to fit, an earlier start moved.
9. `cursor` replaces `page` (either, not both): `page` is dropped beside a cursor.
10. A webhook URL must be https:// to a host that resolves only to public addresses (DNS at
   registration; the fuzz run does not start the service with --webhook-allow-private): a
   positive registration's URL becomes WEBHOOK_URL (`ST_WEBHOOK_URL`, by default an https
   URL with a public IPv4 literal, so no DNS lookup decides the answer).
11. A replay's `since` is not in the future and not before 1970-01-01T00:00:00Z (relative to
   now): an instant outside that range becomes a day ago.

And one schemathesis limitation: a referral code in a path is case-insensitive (the
document says so), but schemathesis compares paths case-sensitively, so after
`PUT /referral-codes/eu0ocRw` (re-creating) following `DELETE /referral-codes/EU0OCRW`, a
`GET /referral-codes/EU0OCRW` answering 200 is reported as use-after-free. Path codes are
sent upper-case (as the service stores them), in every request.
"""

from __future__ import annotations

import datetime as dt
import os
from urllib.parse import quote

import requests

import schemathesis

BASE_URL = os.environ["REFERRAL_API_URL"]
ADMIN = os.environ["REFERRAL_API_TOKEN"]
SESSION = requests.Session()
MAX_OFFSET = 100_000
# Which rules to apply (all by default): code, occurred_at, confirmed_at, range, page, bytes,
# upper-code.
RULES = set(os.environ.get("ST_HOOK_RULES", "code,occurred_at,confirmed_at,range,page,bytes,upper-code,tz,buckets,cursor,webhook-url,since").split(","))
# Rule 10: where positive webhook registrations point (a public address literal: no DNS).
WEBHOOK_URL = os.environ.get("ST_WEBHOOK_URL", "https://93.184.216.34/referral-webhook")
# A time series starts no earlier than 1972-01-01T00:00:00Z (rule 8).
SERIES_EPOCH = 63_072_000
ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "Australia/Lord_Howe"]
# Seconds per bucket, at most (a month: 31 days).
BUCKET_SECONDS = {"hour": 3600, "day": 86400, "week": 7 * 86400, "month": 31 * 86400}


def _positive(case) -> bool:
    meta = case.meta
    if meta is None:
        return True
    return meta.generation.mode.is_positive


def _instant(text):
    """An RFC 3339 text as seconds since the Unix epoch (None if it is not one)."""
    if not isinstance(text, str):
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("z", "Z").replace("t", "T"))
    except ValueError:
        return None
    offset = value.utcoffset()
    if offset is None:
        return None
    # Without converting the aware value, which overflows near year 1 or 9999.
    return (value.replace(tzinfo=None) - dt.datetime(1970, 1, 1)).total_seconds() - offset.total_seconds()


def _label(case) -> str:
    return f"{case.operation.method.upper()} {case.operation.path}"


AUTH = {"Authorization": f"Bearer {ADMIN}"}
_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_state = {"seeded": False, "fresh": 0}


def _code_url(code: str) -> str:
    return f"{BASE_URL}/api/v1/referral-codes/{quote(code, safe='')}"


def _seed_once() -> None:
    """The example code the document says to create first (its assignReferralCode example)."""
    if not _state["seeded"]:
        _state["seeded"] = True
        SESSION.put(_code_url("JAN-VERV-8F3A"), headers=AUTH, json={"mentor_id": "usr_4491"})


def _live_code(code: str) -> str:
    """`code` when it is live, else a fresh code assigned here."""
    if SESSION.get(_code_url(code), headers=AUTH).status_code != 404:
        return code
    _state["fresh"] += 1
    fresh = f"ST-HOOK-{_state['fresh']}"
    SESSION.put(_code_url(fresh), headers=AUTH, json={"mentor_id": "usr_4491"})
    return fresh


def _cut_utf8(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore")


def _fix_url(body: dict, field: str) -> None:
    value = body.get(field)
    if isinstance(value, str) and len(value.encode("utf-8")) > 2048:
        body[field] = "https://example.com/"


def _not_before(case, body: dict, field: str, earlier: str, now) -> None:
    """Rule 3: `body[field]` not in the future and not before the path's attribution's
    `earlier` instant; otherwise null (= now)."""
    instant = _instant(body.get(field))
    if instant is None:
        return
    bound = None
    attribution = SESSION.get(
        f"{BASE_URL}/api/v1/referral-attributions/{quote(str(case.path_parameters.get('id', '')), safe='')}",
        headers=AUTH,
    )
    if attribution.status_code == 200:
        bound = _instant(attribution.json().get(earlier))
    if instant > now or instant < 0 or (bound is not None and instant < bound):
        body[field] = None


@schemathesis.hook
def before_call(context, case, kwargs):
    _seed_once()
    if "upper-code" in RULES and case.operation.path == "/api/v1/referral-codes/{code}" and isinstance(case.path_parameters, dict):
        code = case.path_parameters.get("code")
        if isinstance(code, str):
            case.path_parameters["code"] = code.translate(_ASCII_UPPER)
    if not _positive(case):
        return
    label = _label(case)
    body = case.body if isinstance(case.body, dict) else None
    now_dt = dt.datetime.now(dt.timezone.utc)
    now = now_dt.timestamp()

    if label == "POST /api/v1/referral-attributions" and body is not None:
        occurred = _instant(body.get("occurred_at"))
        if "occurred_at" in RULES and occurred is not None and not 0 <= occurred <= now + 4 * 60:
            body["occurred_at"] = (now_dt - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        if "bytes" in RULES and isinstance(body.get("user_agent"), str):
            body["user_agent"] = _cut_utf8(body["user_agent"], 1024)
        if "bytes" in RULES:
            _fix_url(body, "referrer_url")
        if "code" in RULES and isinstance(body.get("code"), str):
            body["code"] = _live_code(body["code"])

    if "confirmed_at" in RULES and label == "PUT /api/v1/referral-attributions/{id}" and body is not None:
        _not_before(case, body, "confirmed_at", "occurred_at", now)

    if "confirmed_at" in RULES and label == "POST /api/v1/referral-attributions/{id}/reversal" and isinstance(body, dict):
        _not_before(case, body, "reversed_at", "confirmed_at", now)

    if "bytes" in RULES and label == "PUT /api/v1/referral-codes/{code}" and body is not None:
        _fix_url(body, "destination_url")

    if "webhook-url" in RULES and label == "POST /api/v1/webhooks" and body is not None and isinstance(body.get("url"), str):
        body["url"] = WEBHOOK_URL

    if "since" in RULES and label == "POST /api/v1/webhooks/{id}/replay" and body is not None:
        since = _instant(body.get("since"))
        if since is not None and not 0 <= since <= now - 1:
            body["since"] = (now_dt - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

    query = case.query
    if isinstance(query, dict):
        start, end = _instant(query.get("from")), _instant(query.get("to"))
        if "range" in RULES and start is not None and end is not None and start > end:
            query["from"], query["to"] = query["to"], query["from"]
        if "tz" in RULES and "tz" in query and query["tz"] not in ZONES:
            query["tz"] = ZONES[len(str(query["tz"])) % len(ZONES)]
        if "cursor" in RULES and "cursor" in query:
            query.pop("page", None)
        if "buckets" in RULES and label.endswith("/timeseries"):
            seconds = BUCKET_SECONDS.get(query.get("interval", "day"), 86400)
            start, end = _instant(query.get("from")), _instant(query.get("to"))
            if start is not None and start < SERIES_EPOCH:
                start = SERIES_EPOCH
                query["from"] = "1972-01-01T00:00:00Z"
                if end is not None and end < start:
                    end = start
                    query["to"] = query["from"]
            if start is not None or end is not None:
                end = end if end is not None else now
                start = start if start is not None else end
                if end - start > 900 * seconds:
                    capped = min(start + 900 * seconds, 253_402_300_799)  # 9999-12-31T23:59:59Z
                    query["to"] = dt.datetime.fromtimestamp(capped, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            elif query.get("period", "30d") in ("all_time", "90d") and query.get("interval") == "hour":
                query["period"] = "7d"
        page, limit = _integer(query.get("page")), _integer(query.get("limit", 20))
        if "page" in RULES and page is not None and limit is not None and limit >= 1 and (page - 1) * limit > MAX_OFFSET:
            query["page"] = 1 + MAX_OFFSET // limit


def _integer(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None
