"""Reading e-mail: raw RFC 5322 messages and SendGrid inbound-parse forms become one
`ParsedEmail`, whatever way they came in. No I/O here, so it can run in a thread.

What it decides:
- the kind of message (`classify`): a person's message, a delivery status
  notification (RFC 3464 bounce), a read receipt (RFC 8098 MDN) or an automatic
  reply (RFC 3834 `Auto-Submitted: auto-replied`);
- the Message-ID, In-Reply-To and References as bare ids (no angle brackets);
- the text, with quoted history (`>` lines, the "On ... wrote:" line, an
  "-----Original Message-----" block) split off (`split_quoted`);
- the attachments, with their bytes when the caller has them.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesParser, HeaderParser
from email.utils import getaddresses, parseaddr
from html.parser import HTMLParser
from typing import Literal

# The kinds of inbound mail the channel knows; each has a handler in `EmailChannel`.
EmailKind = Literal["message", "delivery_status", "read_receipt", "auto_reply"]

# Stored sizes: a message document must stay far below MongoDB's 16 MB.
TEXT_MAX_CHARS = 200_000
HTML_MAX_CHARS = 500_000
TRUNCATED = "\n[... truncated]"


class MalformedEmail(ValueError):
    """Input that is not an e-mail we can store (a 400 or an SMTP 550)."""


@dataclass(frozen=True)
class RawAttachment:
    """An attachment as received; `data` is None when only its size is known."""

    name: str | None
    content_type: str
    size: int
    data: bytes | None = None


@dataclass(frozen=True)
class DeliveryReport:
    """The machine-readable part of a DSN or an MDN about one of our messages."""

    original_message_id: str | None
    # DSN: failed | delayed | delivered | relayed | expanded; MDN: displayed | deleted ...
    action: str
    status: str | None = None
    diagnostic: str | None = None
    recipient: str | None = None


@dataclass(frozen=True)
class ParsedEmail:
    kind: EmailKind
    sender: str | None
    sender_name: str | None
    subject: str | None
    message_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]
    text: str | None
    html: str | None
    attachments: tuple[RawAttachment, ...] = ()
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    reply_to: str | None = None
    report: DeliveryReport | None = None
    # sha256 of what was received: the provider id of a message without Message-ID.
    digest: str = ""
    extra: dict[str, str] = field(default_factory=dict)


# -- Message-IDs -----------------------------------------------------------------------

_MSG_ID = re.compile(r"<([^<>\s]+)>")


def message_ids(value: str | None) -> list[str]:
    """The ids in a Message-ID, In-Reply-To or References header, without brackets.

    Some clients write an id without brackets; a lone token with an "@" is kept.
    """
    if not value:
        return []
    found = _MSG_ID.findall(value)
    if found:
        return found
    token = value.strip()
    if token and "@" in token and not any(c.isspace() for c in token):
        return [token.strip("<>")]
    return []


def first_message_id(value: str | None) -> str | None:
    ids = message_ids(value)
    return ids[0] if ids else None


# -- quoted history ---------------------------------------------------------------------

# "On Tue, 3 Apr 2012 at 16:19, Bob <bob@example.com> wrote:", possibly wrapped over
# up to three lines, and its usual translations.
_ATTRIBUTION_START = re.compile(r"^\s*(On|Am|Le|El|Il|Op|Em|På|W dniu)\s", re.IGNORECASE)
_ATTRIBUTION_END = re.compile(
    r"(wrote|schrieb|a écrit|escribió|ha scritto|schreef|escreveu|skrev|napisał)\s*:\s*$",
    re.IGNORECASE,
)
# Outlook, Yahoo and friends put the whole previous message below a separator.
_FORWARD_SEPARATOR = re.compile(
    r"^\s*(-{2,}\s*Original Message\s*-{2,}|_{20,})\s*$",
    re.IGNORECASE,
)


def _is_quote(line: str) -> bool:
    return line.lstrip().startswith(">")


def split_quoted(text: str) -> tuple[str, str | None]:
    """Split `text` into what the sender wrote now and the quoted history.

    Lines starting with ">" and the "On ... wrote:" attribution that introduces
    them are history, wherever they are (bottom-posting and inline replies keep
    their new lines); so is everything from an "-----Original Message-----"
    separator on. Both parts are kept: the UI shows the history folded. When
    nothing new is left (a bare forward), the whole text is the message.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    quoted = [False] * len(lines)

    for index, line in enumerate(lines):
        if _FORWARD_SEPARATOR.match(line) and index > 0:
            for rest in range(index, len(lines)):
                quoted[rest] = True
            break
        if _is_quote(line):
            quoted[index] = True

    # The attribution: one to three lines starting "On ..." and ending "wrote:",
    # followed (after blank lines) by quoted lines or by nothing.
    for index, line in enumerate(lines):
        if quoted[index] or not _ATTRIBUTION_START.match(line):
            continue
        for end in range(index, min(index + 3, len(lines))):
            if end > index and (not lines[end].strip() or quoted[end]):
                break
            if _ATTRIBUTION_END.search(lines[end]):
                after = end + 1
                while after < len(lines) and not lines[after].strip():
                    after += 1
                if after == len(lines) or quoted[after]:
                    for marked in range(index, end + 1):
                        quoted[marked] = True
                break

    # Blank lines inside a quoted block belong to it.
    for index, line in enumerate(lines):
        if line.strip() or quoted[index]:
            continue
        before = next((quoted[i] for i in range(index - 1, -1, -1) if lines[i].strip()), None)
        after_q = next((quoted[i] for i in range(index + 1, len(lines)) if lines[i].strip()), None)
        if before and after_q is not False:
            quoted[index] = True

    new = "\n".join(line for line, q in zip(lines, quoted, strict=True) if not q).strip()
    history = "\n".join(line for line, q in zip(lines, quoted, strict=True) if q).strip()
    if not history or not new:
        return "\n".join(lines).strip(), None
    return new, history


# -- HTML ---------------------------------------------------------------------------------


def one_line(text: str) -> str:
    """Text as one line of at most 200 characters (an SMTP reply, a send error)."""
    return " ".join(text.split())[:200]


def html_from_text(text: str) -> str:
    """An HTML alternative of a plain text: escaped, line breaks kept."""
    body = "<br>\n".join(html.escape(line) for line in text.split("\n"))
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head>\n'
        f'<body><div style="white-space: pre-wrap">{body}</div></body></html>\n'
    )


class _TextExtractor(HTMLParser):
    _BREAKS = frozenset({"br", "p", "div", "li", "tr", "h1", "h2", "h3", "h4", "blockquote"})
    _SKIP = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BREAKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skipping:
            self._skipping -= 1
        elif tag in self._BREAKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def text_from_html(markup: str) -> str:
    """The readable text of an HTML body (for mail that has no text/plain part)."""
    extractor = _TextExtractor()
    extractor.feed(markup)
    extractor.close()
    text = "".join(extractor.parts)
    text = re.sub(r"[ \t\xa0]+", " ", text)
    return re.sub(r"\n\s*\n\s*\n+", "\n\n", text).strip()


def _cap(value: str | None, limit: int) -> str | None:
    if value is None or len(value) <= limit:
        return value
    return value[:limit] + TRUNCATED


# -- classification -----------------------------------------------------------------------


def classify(headers: Message, part_types: Iterable[str] = ()) -> EmailKind:
    """Which kind of mail this is, from its headers and the types of its parts."""
    report_type = str(headers.get_param("report-type", "", header="content-type")).lower()
    types = {t.lower() for t in part_types}
    if report_type == "delivery-status" or "message/delivery-status" in types:
        return "delivery_status"
    if report_type == "disposition-notification" or "message/disposition-notification" in types:
        return "read_receipt"
    auto = str(headers.get("Auto-Submitted", "")).strip().lower()
    if (
        auto.startswith("auto-replied")
        or str(headers.get("X-Autoreply", "")).strip().lower() == "yes"
        or headers.get("X-Autorespond") is not None
        or str(headers.get("Precedence", "")).strip().lower() == "auto_reply"
    ):
        return "auto_reply"
    return "message"


def _field_blocks(payload: bytes) -> list[Message]:
    """The header-like blocks of a message/delivery-status or MDN body."""
    text = payload.decode("utf-8", errors="replace").replace("\r\n", "\n")
    parser = HeaderParser(policy=policy.compat32)
    return [parser.parsestr(block + "\n") for block in re.split(r"\n\s*\n", text) if block.strip()]


def _strip_type(value: str | None) -> str | None:
    """'smtp; 550 5.1.1 unknown' -> '550 5.1.1 unknown'; 'rfc822;a@b' -> 'a@b'."""
    if value is None:
        return None
    value = " ".join(str(value).split())
    kind, sep, rest = value.partition(";")
    return rest.strip() if sep and " " not in kind.strip() else value


def delivery_report(kind: EmailKind, parts: Sequence[tuple[str, bytes]]) -> DeliveryReport | None:
    """The report of a DSN or an MDN from its parts (content type, bytes)."""
    original: str | None = None
    for ctype, payload in parts:
        if ctype in ("text/rfc822-headers", "message/rfc822", "message/rfc822-headers"):
            headers = HeaderParser(policy=policy.compat32).parsestr(
                payload.decode("utf-8", errors="replace")
            )
            original = first_message_id(headers.get("Message-ID")) or original
    for ctype, payload in parts:
        if kind == "delivery_status" and ctype == "message/delivery-status":
            recipients = [b for b in _field_blocks(payload) if b.get("Action")]
            if not recipients:
                return None
            chosen = next(
                (b for b in recipients if str(b["Action"]).strip().lower() == "failed"),
                recipients[0],
            )
            return DeliveryReport(
                original_message_id=original,
                action=str(chosen["Action"]).strip().lower(),
                status=str(chosen.get("Status", "")).strip() or None,
                diagnostic=_strip_type(chosen.get("Diagnostic-Code")),
                recipient=_strip_type(chosen.get("Final-Recipient")),
            )
        if kind == "read_receipt" and ctype == "message/disposition-notification":
            fields: dict[str, str] = {}
            for block in _field_blocks(payload):
                for name, value in block.items():
                    fields.setdefault(name.lower(), str(value))
            disposition = fields.get("disposition", "")
            action = disposition.rpartition(";")[2].strip().split("/")[0].lower()
            return DeliveryReport(
                original_message_id=first_message_id(fields.get("original-message-id")) or original,
                action=action or "unknown",
                recipient=_strip_type(fields.get("final-recipient")),
            )
    return None


# -- raw RFC 5322 -------------------------------------------------------------------------


def _part_bytes(part: Message) -> bytes:
    if part.get_content_maintype() == "message" or part.is_multipart():
        inner = part.get_payload()
        if isinstance(inner, list):
            return b"".join(p.as_bytes() if isinstance(p, Message) else b"" for p in inner)
        return part.as_bytes()
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _part_text(part: Message) -> str:
    data = _part_bytes(part)
    charset = part.get_content_charset() or "utf-8"
    try:
        return data.decode(charset, errors="replace")
    except LookupError:
        return data.decode("utf-8", errors="replace")


def _addresses(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(addr for _, addr in getaddresses([str(v) for v in values]) if addr)


def _sender(header: object) -> tuple[str | None, str | None]:
    """(address, display name) of a From header, tolerating malformed ones."""
    addresses = getattr(header, "addresses", None)
    if addresses:
        first: Address = addresses[0]
        if first.username and first.domain:
            return f"{first.username}@{first.domain}", first.display_name or None
    name, addr = parseaddr(str(header or ""))
    return (addr or None), (name or None)


def parse_raw(raw: bytes) -> ParsedEmail:
    """Parse a whole message as received by SMTP (or SendGrid's raw mode)."""
    try:
        msg = BytesParser(policy=policy.default).parsebytes(raw)
    except Exception as error:  # the parser is lenient; this is truly broken input
        raise MalformedEmail(f"unreadable message: {type(error).__name__}") from error
    assert isinstance(msg, EmailMessage)

    all_parts = list(msg.walk())
    kind = classify(msg, (p.get_content_type() for p in all_parts))
    sender, sender_name = _sender(msg.get("From"))

    text: str | None = None
    body_html: str | None = None
    attachments: list[RawAttachment] = []
    report: DeliveryReport | None = None
    if kind in ("delivery_status", "read_receipt"):
        report = delivery_report(
            kind, [(p.get_content_type(), _part_bytes(p)) for p in all_parts[1:]]
        )
        plain = msg.get_body(preferencelist=("plain",))
        text = _part_text(plain) if plain is not None else None
    else:
        plain = msg.get_body(preferencelist=("plain",))
        rich = msg.get_body(preferencelist=("html",))
        text = _part_text(plain) if plain is not None else None
        body_html = _part_text(rich) if rich is not None else None
        for part in msg.iter_attachments():
            data = _part_bytes(part)
            attachments.append(
                RawAttachment(
                    name=part.get_filename(),
                    content_type=part.get_content_type(),
                    size=len(data),
                    data=data,
                )
            )

    subject = msg.get("Subject")
    return ParsedEmail(
        kind=kind,
        sender=sender,
        sender_name=sender_name,
        subject=" ".join(str(subject).split()) if subject is not None else None,
        message_id=first_message_id(msg.get("Message-ID")),
        in_reply_to=first_message_id(msg.get("In-Reply-To")),
        references=tuple(message_ids(msg.get("References"))),
        text=_cap(text, TEXT_MAX_CHARS),
        html=_cap(body_html, HTML_MAX_CHARS),
        attachments=tuple(attachments),
        to=_addresses(msg.get_all("To", [])),
        cc=_addresses(msg.get_all("Cc", [])),
        reply_to=(_addresses(msg.get_all("Reply-To", [])) or (None,))[0],
        report=report,
        digest=hashlib.sha256(raw).hexdigest(),
    )


# -- SendGrid inbound parse ----------------------------------------------------------------

# The text fields SendGrid posts (its "Default Data Format"); files come apart.
SENDGRID_TEXT_FIELDS = frozenset(
    {
        "headers",
        "dkim",
        "content-ids",
        "to",
        "cc",
        "from",
        "text",
        "html",
        "sender_ip",
        "spam_report",
        "envelope",
        "attachments",
        "subject",
        "spam_score",
        "attachment-info",
        "charsets",
        "SPF",
        "email",
    }
)
_KEPT_EXTRA = ("SPF", "dkim", "spam_score", "sender_ip")


def _decode(data: bytes | None, charset: str | None) -> str | None:
    if data is None:
        return None
    try:
        return data.decode(charset or "utf-8", errors="replace")
    except (LookupError, UnicodeError, ValueError):
        # An unknown name, a codec that cannot replace (idna), a name with NUL
        # or a surrogate: the sender's charset is no help, UTF-8 is the best guess.
        return data.decode("utf-8", errors="replace")


def _json_object(value: str | None, name: str) -> dict[str, object]:
    if not value:
        return {}
    try:
        loaded = json.loads(value)
    except ValueError:
        raise MalformedEmail(f"field {name} is not JSON") from None
    if not isinstance(loaded, dict):
        raise MalformedEmail(f"field {name} is not a JSON object")
    return loaded


def parse_sendgrid(fields: Mapping[str, bytes], files: Mapping[str, RawAttachment]) -> ParsedEmail:
    """Parse a SendGrid inbound-parse post: its text fields and its attachment files
    (keyed by field name, `attachment1` ...). Raises MalformedEmail (a 400)."""
    charsets = {
        str(k): str(v)
        for k, v in _json_object(_decode(fields.get("charsets"), None), "charsets").items()
    }

    def text(name: str) -> str | None:
        return _decode(fields.get(name), charsets.get(name))

    from_field = text("from")
    if "email" in fields:  # "POST the raw, full MIME message"
        parsed = parse_raw(fields["email"])
        if parsed.sender is None and from_field:
            name, addr = parseaddr(from_field)
            parsed = _replace_sender(parsed, addr or None, name or None)
        if parsed.sender is None:
            raise MalformedEmail("missing field: from")
        return parsed

    if not from_field or not from_field.strip():
        raise MalformedEmail("missing field: from")
    sender_name, sender = parseaddr(from_field)
    if not sender or "@" not in sender:
        raise MalformedEmail("field from is not an e-mail address")
    envelope = _json_object(text("envelope"), "envelope")
    info = _json_object(text("attachment-info"), "attachment-info")

    headers = HeaderParser(policy=policy.default).parsestr(text("headers") or "")
    attachments: list[RawAttachment] = []
    for name in sorted(files, key=lambda n: (len(n), n)):
        given = files[name]
        meta = info.get(name)
        meta = meta if isinstance(meta, dict) else {}
        attachments.append(
            RawAttachment(
                name=str(meta.get("filename") or meta.get("name") or given.name or name),
                content_type=str(meta.get("type") or given.content_type),
                size=given.size,
                data=given.data,
            )
        )
    kind = classify(headers, (a.content_type for a in attachments))
    report = None
    if kind in ("delivery_status", "read_receipt"):
        report = delivery_report(
            kind, [(a.content_type, a.data) for a in attachments if a.data is not None]
        )

    body_text = text("text")
    body_html = text("html")
    subject = text("subject")
    if subject is None and headers.get("Subject") is not None:
        subject = str(headers["Subject"])
    digest = hashlib.sha256(
        b"\x00".join(
            fields.get(k, b"") for k in ("from", "to", "cc", "subject", "headers", "text", "html")
        )
    ).hexdigest()
    extra = {k.lower(): v for k in _KEPT_EXTRA if (v := (text(k) or "").strip())}
    envelope_to = envelope.get("to")
    if isinstance(envelope_to, list) and envelope_to:
        extra["envelope_to"] = ", ".join(str(t) for t in envelope_to)[:500]
    return ParsedEmail(
        kind=kind,
        sender=sender,
        sender_name=sender_name or None,
        subject=" ".join(subject.split()) if subject is not None else None,
        message_id=first_message_id(headers.get("Message-ID")),
        in_reply_to=first_message_id(headers.get("In-Reply-To")),
        references=tuple(message_ids(headers.get("References"))),
        text=_cap(body_text, TEXT_MAX_CHARS),
        html=_cap(body_html, HTML_MAX_CHARS),
        attachments=tuple(attachments),
        to=_addresses([text("to") or ""]),
        cc=_addresses([text("cc") or ""]),
        reply_to=(_addresses(headers.get_all("Reply-To", [])) or (None,))[0],
        report=report,
        digest=digest,
        extra=extra,
    )


def _replace_sender(parsed: ParsedEmail, sender: str | None, name: str | None) -> ParsedEmail:
    return replace(parsed, sender=sender, sender_name=name)
