"""A simulated Twilio: a real aiohttp server on 127.0.0.1 speaking the Messages API,
and the helpers to call the hub the way Twilio calls it (signed form webhooks). The
tests and the pacing benchmark send to it, and the sandbox puts it in Twilio's place
(`channels.simulation`); it reads no files and imports nothing of the hub but the
inbox settings.

REST side (`POST /2010-04-01/Accounts/{AccountSid}/Messages.json`):
- HTTP basic auth with the account SID and auth token, else 401 code 20003;
- a form body (`To`, `From`, `Body`, repeated `MediaUrl`, `StatusCallback`,
  `ContentSid`...), checked as Twilio does (21604 no To, 21603 no From, 21619 no
  Body/MediaUrl/ContentSid);
- 201 with the message resource (`sid` "SM...", `status` "queued");
- a rate per sender (`From`) over a sliding window, answered 429 with code 20429
  (`rejected_429` counts them);
- injected failures (`fail_next`: 21610, 63016, 500, 429 with Retry-After...) and
  recipients that always fail (`opted_out`: 21610);
- every request recorded with its monotonic time and the status it got.

Webhook side: `signature()` computes `X-Twilio-Signature` with the twilio library's
`RequestValidator.compute_signature`, `signed()` builds a signed body, and
`post_webhook()` posts it to a hub the way Twilio does, so tests and benchmarks
can drive the hub over HTTP. `ACCOUNT_SID` and `AUTH_TOKEN` are the simulator's
account unless it is given another; `PUBLIC_URL` is the hub's public URL its
webhooks are signed for unless a call names another.

The sandbox attaches its Twilio inboxes: each is one more account (its SID and auth
token), which may send only from the inbox's numbers (21606 otherwise). What such an
account sends is shown to the customer (`Customers.received`) and, when the send
named a `StatusCallback`, followed by the signed `sent` and `delivered` callbacks
over the delivery delay. Its customer side (`write`, `call`, `hang_up`) posts the
incoming-message and voice webhooks Twilio would, built in `customer`, and reads
the TwiML the hub answers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import itertools
import json
import re
import secrets
import time
import urllib.parse
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from channels.base import ChannelSettings
from channels.simulation import (
    Customer,
    Customers,
    Delivered,
    Handed,
    HttpSimulator,
    LineOffer,
    Medium,
    PhoneCall,
    Place,
    Receipt,
    Step,
    Writing,
    keep_last,
    report_delivery,
)
from channels.twilio.customer import (
    call_params,
    message_params,
    read_twiml,
    recording_params,
    shown_text,
)
from channels.twilio.settings import TwilioSettings

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "test-auth-token-0123456789abcdef"  # noqa: S105 (the simulator's own)
PUBLIC_URL = "https://hub.example.test"

Params = Mapping[str, str] | Sequence[tuple[str, str]]

# The error answers Twilio gives, by code: HTTP status and message.
ERRORS: dict[int, tuple[int, str]] = {
    20003: (401, "Authenticate"),
    20404: (404, "The requested resource was not found"),
    20429: (429, "Too Many Requests"),
    20500: (500, "Internal Server Error"),
    21211: (400, "Invalid 'To' Phone Number"),
    21603: (400, "A 'From' phone number is required."),
    21604: (400, "A 'To' phone number is required."),
    21606: (400, "The From phone number is not a valid number of yours."),
    21610: (400, "Attempt to send to unsubscribed recipient"),
    21619: (400, "A text message body or media url must be specified."),
    21655: (400, "The ContentSid is Invalid."),
    21656: (400, "The ContentVariables Parameter is invalid."),
    63016: (
        400,
        "Failed to send freeform message because you are outside the allowed window. "
        "If you are using WhatsApp, please use a Message Template.",
    ),
}


# The account's contents as the Content API lists them (`GET /v1/ContentAndApprovals`);
# only those approved for WhatsApp may be sent with `ContentSid`.
DEFAULT_CONTENTS: tuple[dict[str, Any], ...] = (
    {
        "sid": "HX0123456789abcdef0123456789abcdef",
        "friendly_name": "welcome",
        "language": "en",
        "variables": {"1": "Ann"},
        "types": {"twilio/text": {"body": "Welcome, {{1}}!"}},
        "approval_requests": {
            "name": "welcome",
            "category": "UTILITY",
            "status": "approved",
            "content_type": "twilio/text",
            "rejection_reason": "",
        },
    },
    {
        "sid": "HX" + "1" * 32,
        "friendly_name": "order_update",
        "language": "en",
        "variables": {"1": "Ann", "2": "A-1"},
        "types": {"twilio/text": {"body": "Hello {{1}}, your order {{2}} has shipped."}},
        "approval_requests": {
            "name": "order_update",
            "category": "UTILITY",
            "status": "approved",
            "content_type": "twilio/text",
            "rejection_reason": "",
        },
    },
    {
        "sid": "HX" + "2" * 32,
        "friendly_name": "follow_up",
        "language": "en",
        "variables": {},
        "types": {
            "twilio/text": {
                "body": "We have not heard from you. Reply to pick up where we left off."
            }
        },
        "approval_requests": {
            "name": "follow_up",
            "category": "MARKETING",
            "status": "approved",
            "content_type": "twilio/text",
            "rejection_reason": "",
        },
    },
    {
        "sid": "HX" + "3" * 32,
        "friendly_name": "summer_sale",
        "language": "en",
        "variables": {"1": "Ann"},
        "types": {"twilio/text": {"body": "Everything half price, {{1}}!"}},
        "approval_requests": {
            "name": "summer_sale",
            "category": "MARKETING",
            "status": "rejected",
            "content_type": "twilio/text",
            "rejection_reason": "promotional",
        },
    },
)


def error_body(code: int, message: str | None = None) -> tuple[int, dict[str, Any]]:
    status, default = ERRORS.get(code, (400, f"Error {code}"))
    return status, {
        "code": code,
        "message": message or default,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


@dataclass
class Account:
    """One account the simulator serves: the default one, or an attached inbox's."""

    sid: str
    auth_token: str
    settings: TwilioSettings | None = None  # an attached inbox's
    inbox: str | None = None

    def owns(self, sender: str) -> bool:
        """Whether `sender` (a From value) is one of the account's numbers; any is,
        for an account the simulator was not given numbers of."""
        s = self.settings
        if s is None:
            return True
        own = {s.number, f"whatsapp:{s.whatsapp_number}" if s.whatsapp_number else None}
        return sender in own - {None}


@dataclass
class FakeTwilio(HttpSimulator):
    account_sid: str = ACCOUNT_SID  # the default account ("": none)
    auth_token: str = AUTH_TOKEN
    rate: float | None = None  # messages per second per sender (From)
    window: float = 1.0  # the rate is enforced over this sliding window (seconds)
    # Seconds of arrival jitter forgiven: a send that arrives this much early for
    # its slot still counts as outside the window (loopback scheduling noise).
    jitter: float = 0.0
    delay: float = 0.0  # seconds before each answer
    opted_out: set[str] = field(default_factory=set)  # To values that get 21610
    # Every request: monotonic time `at`, `form` (every value), `body` (first value
    # of each field), `to`, `from`, `text`, `media`, and the `status` it was answered.
    requests: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)  # accepted messages
    rejected_429: int = 0
    failures: deque[tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=deque)
    url: str = ""
    history: int | None = None  # requests and sent kept (None: all)
    customers: Customers | None = None  # the sandbox's customer side
    accounts: dict[str, Account] = field(default_factory=dict)
    # The Content API's contents (`GET /v1/ContentAndApprovals`); a send naming a
    # `ContentSid` must name an approved one with a variable for each placeholder.
    contents: list[dict[str, Any]] = field(
        default_factory=lambda: [dict(c) for c in DEFAULT_CONTENTS]
    )
    content_reads: int = 0  # Content API list requests answered
    # Customers' files by path (`put_media`, `put_recording`): (bytes, content type).
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    media_requests: int = 0
    # Every MediaUrl fetched while sending: {url, status, content_type, data}.
    fetched: list[dict[str, Any]] = field(default_factory=list)
    _windows: dict[str, deque[float]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    # Message SIDs differ from one run to the next (a store outlives the simulator).
    _run: str = field(default_factory=lambda: secrets.token_hex(4))

    def __post_init__(self) -> None:
        if self.account_sid:
            self.accounts[self.account_sid] = Account(self.account_sid, self.auth_token)

    # -- the sandbox -------------------------------------------------------------------

    @classmethod
    def for_sandbox(cls, customers: Customers) -> FakeTwilio:
        return cls(account_sid="", history=1000, customers=customers)

    def attach(self, inbox: str, settings: ChannelSettings, place: Place) -> ChannelSettings:
        assert isinstance(settings, TwilioSettings)
        self.accounts[settings.account_sid] = Account(
            settings.account_sid, settings.auth_token, settings, inbox
        )
        return settings.model_copy(update={"api_base": place.api_base})

    def _attached(self, inbox: str) -> tuple[Account, TwilioSettings]:
        for account in self.accounts.values():
            if account.inbox == inbox and account.settings is not None:
                return account, account.settings
        raise LookupError(f"no Twilio inbox {inbox!r} attached")

    def lines(self, inbox: str) -> list[LineOffer]:
        _, s = self._attached(inbox)
        found: list[LineOffer] = []
        if s.number:
            found.append(LineOffer("sms", f"SMS to {s.number}", s.number))
        if s.whatsapp_number:
            found.append(
                LineOffer(
                    "whatsapp", f"WhatsApp (via Twilio) to {s.whatsapp_number}", s.whatsapp_number
                )
            )
        if s.number:
            found.append(LineOffer("voice", f"Call {s.number}", s.number))
        return found

    # -- control ---------------------------------------------------------------------

    def fail_next(
        self,
        code: int,
        *,
        status: int | None = None,
        message: str | None = None,
        times: int = 1,
        retry_after: str | None = None,
    ) -> None:
        """Answer the next `times` requests with Twilio's error `code`."""
        default_status, payload = error_body(code, message)
        payload["status"] = status or default_status
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        for _ in range(times):
            self.failures.append((payload["status"], dict(payload), headers))

    @property
    def api_base(self) -> str:
        return self.url

    # -- customers' files ------------------------------------------------------------

    def put_media(self, data: bytes, content_type: str, *, account_sid: str | None = None) -> str:
        """A file a customer sent: the MediaUrl Twilio gives the hub (its bytes need
        the account's basic auth, as with "HTTP Basic Auth for media" on)."""
        sid = account_sid or self.account_sid
        message, media = f"MM{secrets.token_hex(16)}", f"ME{secrets.token_hex(16)}"
        path = f"/2010-04-01/Accounts/{sid}/Messages/{message}/Media/{media}"
        self.files[path] = (data, content_type)
        return self.url + path

    def put_recording(self, data: bytes, *, account_sid: str | None = None) -> str:
        """A call's recording: the RecordingUrl (no extension; served as WAV)."""
        sid = account_sid or self.account_sid
        path = f"/2010-04-01/Accounts/{sid}/Recordings/RE{secrets.token_hex(16)}"
        self.files[path] = (data, "audio/x-wav")
        return self.url + path

    async def media_file(self, request: web.Request) -> web.Response:
        self.media_requests += 1
        if self._account(request) is None:
            status, payload = error_body(20003)
            return web.json_response(payload, status=status)
        path = request.path
        for suffix in (".wav", ".mp3"):
            path = path.removesuffix(suffix)
        found = self.files.get(path)
        if found is None:
            status, payload = error_body(20404)
            return web.json_response(payload, status=status)
        data, content_type = found
        return web.Response(body=data, content_type=content_type)

    # -- the REST API ----------------------------------------------------------------

    def _account(self, request: web.Request) -> Account | None:
        """The account the request's basic auth names and proves, if it is its URL's."""
        account = self.accounts.get(request.match_info["sid"])
        header = request.headers.get("Authorization", "")
        if account is None or not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError, binascii.Error):
            return None
        if user != account.sid or not hmac.compare_digest(
            password.encode(), account.auth_token.encode()
        ):
            return None
        return account

    def _over_rate(self, sender: str, now: float) -> bool:
        if self.rate is None:
            return False
        window = self._windows.setdefault(sender, deque())
        while window and now - window[0] >= self.window - self.jitter:
            window.popleft()
        if len(window) >= self.rate * self.window:
            return True
        window.append(now)
        return False

    async def messages(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        posted = await request.post()
        form: MultiDict[str] = MultiDict((key, str(value)) for key, value in posted.items())
        record: dict[str, Any] = {
            "at": now,
            "path": request.path,
            "form": {key: form.getall(key) for key in form},
            "to": form.get("To"),
            "from": form.get("From"),
            "body": {key: form[key] for key in form},  # the form, first value of each
            "text": form.get("Body"),
            "media": form.getall("MediaUrl", []),
            "status_callback": form.get("StatusCallback"),
        }
        self.requests.append(record)
        keep_last(self.requests, self.history)
        if self.delay:
            await asyncio.sleep(self.delay)

        def answer(
            status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
        ) -> web.Response:
            record["status"] = status
            return web.json_response(payload, status=status, headers=headers or None)

        account = self._account(request)
        if account is None:
            return answer(*error_body(20003))
        if self.failures:
            status, payload, headers = self.failures.popleft()
            return answer(status, payload, headers)
        if not form.get("To"):
            return answer(*error_body(21604))
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return answer(*error_body(21603))
        if not (form.get("Body") or form.get("MediaUrl") or form.get("ContentSid")):
            return answer(*error_body(21619))
        if form.get("ContentSid"):
            refused = self._check_content(str(form["ContentSid"]), form.get("ContentVariables"))
            if refused:
                return answer(*error_body(refused))
        if not account.owns(str(form.get("From") or "")):
            return answer(*error_body(21606))
        if self._over_rate(str(form.get("From") or form.get("MessagingServiceSid")), now):
            self.rejected_429 += 1
            return answer(*error_body(20429), {"Retry-After": "1"})
        if str(form["To"]).removeprefix("whatsapp:") in self.opted_out:
            return answer(*error_body(21610))
        for media_url in form.getall("MediaUrl", []):
            await self._fetch_media(str(media_url))
        sid = f"SM{self._run}{next(self._ids):024x}"
        resource = self.resource(sid, form, account.sid)
        self.sent.append({**record, "sid": sid})
        keep_last(self.sent, self.history)
        if account.inbox is not None:
            self._show(account, form, sid)
        return answer(201, resource)

    async def _fetch_media(self, url: str) -> None:
        """Fetch a `MediaUrl` as Twilio does before it sends (recorded in `fetched`:
        the URL, the HTTP status, the content type and the bytes)."""
        record: dict[str, Any] = {"url": url, "status": None, "content_type": None, "data": b""}
        self.fetched.append(record)
        if not url.startswith(("http://127.0.0.1", "http://localhost")):
            record["status"] = "not fetched (not on loopback)"
            return
        try:
            async with aiohttp.ClientSession() as session, session.get(url) as response:
                record["status"] = response.status
                record["content_type"] = response.headers.get("Content-Type")
                record["data"] = await response.read()
        except aiohttp.ClientError as error:
            record["status"] = type(error).__name__

    def _check_content(self, content_sid: str, variables: str | None) -> int | None:
        """Twilio's error code for a `ContentSid` send it would refuse, else None."""
        found = next((c for c in self.contents if c["sid"] == content_sid), None)
        approval = (found or {}).get("approval_requests") or {}
        if found is None or approval.get("status") != "approved":
            return 21655
        body = str((found.get("types", {}).get("twilio/text") or {}).get("body", ""))
        wanted = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", body))
        try:
            given = json.loads(variables) if variables else {}
        except ValueError:
            return 21656
        if not isinstance(given, dict) or set(given) != wanted:
            return 21656
        return None

    async def content_and_approvals(self, request: web.Request) -> web.Response:
        """`GET /v1/ContentAndApprovals?PageSize=&Page=`: one page of the contents."""
        header = request.headers.get("Authorization", "")
        try:
            user, _, password = (
                base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
            )
        except (ValueError, UnicodeDecodeError, binascii.Error):
            user = password = ""
        account = self.accounts.get(user)
        if account is None or not hmac.compare_digest(
            password.encode(), account.auth_token.encode()
        ):
            status, payload = error_body(20003)
            return web.json_response(payload, status=status)
        self.content_reads += 1
        size = max(1, min(int(request.query.get("PageSize", "50") or 50), 1000))
        number = int(request.query.get("Page", "0") or 0)
        items = self.contents[number * size : (number + 1) * size]
        base = str(request.url.with_query(None))
        more = (number + 1) * size < len(self.contents)
        meta = {
            "page": number,
            "page_size": size,
            "first_page_url": f"{base}?PageSize={size}&Page=0",
            "previous_page_url": f"{base}?PageSize={size}&Page={number - 1}" if number else None,
            "url": f"{base}?PageSize={size}&Page={number}",
            "next_page_url": f"{base}?PageSize={size}&Page={number + 1}" if more else None,
            "key": "contents",
        }
        return web.json_response({"contents": items, "meta": meta})

    def resource(
        self, sid: str, form: MultiDict[str], account_sid: str | None = None
    ) -> dict[str, Any]:
        """The message resource Twilio answers a create with."""
        account_sid = account_sid or self.account_sid
        path = f"/2010-04-01/Accounts/{account_sid}/Messages/{sid}"
        media = form.getall("MediaUrl", [])
        return {
            "account_sid": account_sid,
            "api_version": "2010-04-01",
            "body": form.get("Body", ""),
            "date_created": time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime()),
            "date_sent": None,
            "date_updated": time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime()),
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "num_media": str(len(media)),
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "subresource_uris": {"media": f"{path}/Media.json"},
            "to": form.get("To"),
            "uri": f"{path}.json",
        }

    def _show(self, account: Account, form: MultiDict[str], sid: str) -> None:
        """Show an attached inbox's message to its customer; then report it."""
        customers = self.customers
        assert customers is not None and account.inbox is not None
        to, sender = form["To"], form["From"]
        whatsapp = to.lower().startswith("whatsapp:")
        receipt = customers.received(
            Delivered(
                inbox=account.inbox,
                medium="whatsapp" if whatsapp else "sms",
                address=to.split(":", 1)[1] if whatsapp else to,
                text=shown_text(form, form.getall("MediaUrl", [])),
                provider_id=sid,
            )
        )
        callback = form.get("StatusCallback") or ""
        if not callback:
            receipt.delivered()
            return
        customers.spawn(self._report(account, receipt, callback, sid, to, sender))

    async def _report(
        self, account: Account, receipt: Receipt, callback: str, sid: str, to: str, sender: str
    ) -> None:
        """Post the `sent` and `delivered` callbacks to the send's `StatusCallback`."""
        assert self.customers is not None

        def step(status: str) -> Step:
            params = status_params(sid, status, to, sender, account.sid)
            return lambda: self._to_hub(account, callback, params)

        await report_delivery(self.customers, receipt, [step("sent"), step("delivered")])

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self.messages)
        app.router.add_get(
            "/2010-04-01/Accounts/{sid}/Messages/{message}/Media/{media}", self.media_file
        )
        app.router.add_get("/2010-04-01/Accounts/{sid}/Recordings/{recording}", self.media_file)
        app.router.add_get("/v1/ContentAndApprovals", self.content_and_approvals)
        return app

    # -- calling the hub like Twilio -------------------------------------------------

    def signature(self, url: str, params: Params, auth_token: str | None = None) -> str:
        """`X-Twilio-Signature` for a POST of `params` to `url` (the full URL Twilio
        calls, query string included), by the default account or `auth_token`'s."""
        return RequestValidator(auth_token or self.auth_token).compute_signature(
            url, MultiDict(params)
        )

    def signed(
        self, url: str, params: Params, auth_token: str | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers of Twilio's webhook POST of `params` to `url`."""
        body = urllib.parse.urlencode(list(MultiDict(params).items())).encode()
        return body, {
            "Content-Type": "application/x-www-form-urlencoded; charset=UTF-8",
            "User-Agent": "TwilioProxy/1.1",
            "X-Twilio-Signature": self.signature(url, params, auth_token),
        }

    async def _to_hub(self, account: Account, url: str, params: Params) -> tuple[int, str]:
        """POST `params` to `url` (a public URL of the hub), signed by `account`,
        through the sandbox's customer side."""
        assert self.customers is not None
        body, headers = self.signed(url, params, account.auth_token)
        return await self.customers.post(url, body, headers)

    async def post_webhook(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        path: str,
        params: Params,
        *,
        public_url: str = PUBLIC_URL,
    ) -> tuple[int, str]:
        """POST `params` to `base_url + path`, signed for `public_url + path` (the
        URL the hub is configured to be reached at); return status and body."""
        body, headers = self.signed(public_url + path, params)
        async with session.post(base_url + path, data=body, headers=headers) as response:
            return response.status, await response.text()

    async def report_status(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        sid: str,
        status: str,
        *,
        error_code: int | None = None,
        public_url: str = PUBLIC_URL,
    ) -> tuple[int, str]:
        """Post the status callback of an accepted message to the `StatusCallback`
        its send named, as Twilio does when the message moves on."""
        message = next(m for m in self.sent if m["sid"] == sid)
        callback = message["status_callback"]
        if not callback or not callback.startswith(public_url):
            raise ValueError(f"message {sid} named no StatusCallback under {public_url}")
        params = status_params(
            sid, status, message["to"], message["from"], self.account_sid, error_code
        )
        return await self.post_webhook(
            session, base_url, callback[len(public_url) :], params, public_url=public_url
        )

    # -- the customer's side, in the sandbox ---------------------------------------------

    async def write(self, inbox: str, medium: Medium, writing: Writing) -> Handed:
        account, settings = self._attached(inbox)
        assert self.customers is not None
        whatsapp = medium == "whatsapp"
        business = settings.whatsapp_number if whatsapp else settings.number
        sid = "SM" + secrets.token_hex(16)
        params = message_params(
            account.sid,
            sid,
            sender=writing.customer.address,
            to=business or "",
            body=writing.text,
            whatsapp=whatsapp,
            profile_name=writing.customer.name,
        )
        url = self.customers.webhook_url(inbox) + "/messages"
        status, answer = await self._to_hub(account, url, params)
        return Handed(status, answer, provider_id=sid)

    def _call_form(self, call: PhoneCall, **extra: str) -> dict[str, str]:
        account, settings = self._attached(call.inbox)
        return call_params(
            account.sid,
            call.id,
            caller=call.caller.address,
            called=settings.number or "",
            caller_name=call.caller.name,
            **extra,
        )

    async def call(self, inbox: str, caller: Customer) -> PhoneCall:
        account, _ = self._attached(inbox)
        assert self.customers is not None
        call = PhoneCall(
            id="CA" + secrets.token_hex(16), inbox=inbox, caller=caller, handed=Handed(0, "")
        )
        url = self.customers.webhook_url(inbox) + "/voice"
        status, answer = await self._to_hub(
            account, url, self._call_form(call, CallStatus="ringing")
        )
        call.handed = Handed(status, answer, provider_id=call.id)
        if call.handed.ok:
            call.heard, call.state = read_twiml(answer)
            call.voicemail = call.state is not None
        return call

    async def hang_up(
        self, call: PhoneCall, *, voicemail: bool, duration: int, recording_url: str
    ) -> bool:
        account, _ = self._attached(call.inbox)
        assert self.customers is not None
        left = False
        record = call.state
        if voicemail and record is not None:
            # Twilio's RecordingUrl names the recording without an extension.
            recording = recording_url.removesuffix(".wav")
            if record.get("action"):
                await self._to_hub(
                    account,
                    record["action"],
                    self._call_form(
                        call,
                        CallStatus="completed",
                        RecordingUrl=recording,
                        RecordingDuration=str(duration),
                        Digits="hangup",
                    ),
                )
            if record.get("recordingStatusCallback"):
                await self._to_hub(
                    account,
                    record["recordingStatusCallback"],
                    recording_params(account.sid, call.id, recording, duration),
                )
            left = True
        await self._to_hub(
            account,
            self.customers.webhook_url(call.inbox) + "/voice/status",
            self._call_form(call, CallStatus="completed", CallDuration=str(duration)),
        )
        return left


def status_params(
    sid: str, status: str, to: str, sender: str, account_sid: str, error_code: int | None = None
) -> list[tuple[str, str]]:
    """A message status callback as Twilio posts it (the shape of the fixtures)."""
    params = [
        ("SmsSid", sid),
        ("SmsStatus", status),
        ("MessageStatus", status),
        ("To", to),
        ("MessageSid", sid),
        ("AccountSid", account_sid),
        ("From", sender),
        ("ApiVersion", "2010-04-01"),
    ]
    if error_code is not None:
        params.insert(0, ("ErrorCode", str(error_code)))
    return params
