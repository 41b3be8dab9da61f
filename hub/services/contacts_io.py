"""Contacts in and out as CSV.

Import columns: `name, phone, email, telegram, birthday (YYYY-MM-DD or MM-DD),
timezone, locale, labels` (labels, phones and e-mails may hold several values
separated by `;`); every other column becomes an attribute. Headers are
case-insensitive. A row whose phone, e-mail or Telegram id belongs to a contact
is merged into it: the row's non-empty cells win, labels and identities are
added. A row is rejected, with its reason, when a value is invalid, when it names
no phone, e-mail or Telegram id, or when its identities belong to two contacts.

Rows are read and written in batches: one concurrent by-`_id` read of the
identities a batch names, one of the contacts they belong to, then one insert of
the new contacts, one of the new identities and one bulk update of the merged
contacts.

Export writes the same columns, so an exported file imports back as merges.
Cells a spreadsheet would run as a formula are prefixed with `'` (and import
drops that prefix again).
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

from hub.addresses import InvalidIdentity, normalize_email, normalize_phone
from hub.model import utcnow
from hub.services.contacts import attribute_key, new_contact_doc
from hub.store import Store, find_by_ids, identity_id, new_id

COLUMNS = ("name", "phone", "email", "telegram", "birthday", "timezone", "locale", "labels")
BATCH = 500
MAX_REASONS = 1000
LOCALE = re.compile(r"[A-Za-z]{2,8}([_-][A-Za-z0-9]{1,8})*")
LABEL = re.compile(r"[^$.\x00]{1,64}")
TELEGRAM = re.compile(r"[A-Za-z0-9_:-]{1,64}")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class RowRejected(ValueError):
    pass


@dataclass
class Rejection:
    row: int  # the line of the file (the header is line 1)
    reason: str


@dataclass
class ImportReport:
    rows: int = 0
    created: int = 0
    merged: int = 0
    rejected: int = 0
    reasons: list[Rejection] = field(default_factory=list)

    def reject(self, row: int, reason: str) -> None:
        self.rejected += 1
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(Rejection(row, reason))

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "created": self.created,
            "merged": self.merged,
            "rejected": self.rejected,
            "reasons": [{"row": r.row, "reason": r.reason} for r in self.reasons],
        }


@dataclass
class ContactRow:
    """One valid row, normalised."""

    line: int
    name: str | None = None
    phones: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    telegram: str | None = None
    birthday: dict[str, int | None] | None = None
    timezone: str | None = None
    locale: str | None = None
    labels: list[str] = field(default_factory=list)
    attributes: dict[str, str] = field(default_factory=dict)

    def identity_keys(self) -> list[str]:
        keys = [identity_id("phone", p) for p in self.phones]
        keys += [identity_id("email", e) for e in self.emails]
        if self.telegram:
            keys.append(identity_id("telegram", self.telegram))
        return keys


def _unescape(cell: str) -> str:
    text = cell.strip()
    if text.startswith("'") and text[1:2] in FORMULA_START:
        return text[1:]
    return text


def _values(cell: str) -> list[str]:
    return [_unescape(v) for v in cell.split(";") if v.strip()]


def parse_birthday(text: str) -> dict[str, int | None]:
    """`YYYY-MM-DD` or `MM-DD` as `{month, day, year}`; ValueError otherwise."""
    parts = text.split("-")
    try:
        if len(parts) == 3 and len(parts[0]) == 4:
            day = date(int(parts[0]), int(parts[1]), int(parts[2]))
            if not 1900 <= day.year <= 2100:
                raise ValueError
            return {"month": day.month, "day": day.day, "year": day.year}
        if len(parts) == 2:
            day = date(2000, int(parts[0]), int(parts[1]))  # a leap year: 02-29 is a birthday
            return {"month": day.month, "day": day.day, "year": None}
    except ValueError:
        pass
    raise ValueError(f"bad birthday {text!r} (YYYY-MM-DD or MM-DD)")


def parse_row(line: int, raw: dict[str, str], default_region: str) -> ContactRow:
    """Validate and normalise one row (keys already lower-case); RowRejected says why."""
    cells = {k: _unescape(v) for k, v in raw.items() if v is not None and v.strip()}
    row = ContactRow(line)
    name = cells.pop("name", None)
    if name is not None:
        if len(name) > 200:
            raise RowRejected("name: longer than 200 characters")
        row.name = name
    try:
        row.phones = list(
            dict.fromkeys(
                normalize_phone(p, default_region) for p in _values(cells.pop("phone", ""))
            )
        )
        row.emails = list(
            dict.fromkeys(normalize_email(e) for e in _values(cells.pop("email", "")))
        )
    except InvalidIdentity as error:
        raise RowRejected(str(error)) from None
    telegram = cells.pop("telegram", None)
    if telegram is not None:
        telegram = telegram.removeprefix("@")
        if not TELEGRAM.fullmatch(telegram):
            raise RowRejected(f"not a Telegram id: {telegram!r}")
        row.telegram = telegram
    if not (row.phones or row.emails or row.telegram):
        raise RowRejected("no phone, email or telegram to identify the contact")
    birthday = cells.pop("birthday", None)
    if birthday is not None:
        try:
            row.birthday = parse_birthday(birthday)
        except ValueError as error:
            raise RowRejected(str(error)) from None
    zone = cells.pop("timezone", None)
    if zone is not None:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise RowRejected(f"unknown time zone {zone!r}") from None
        row.timezone = zone
    locale = cells.pop("locale", None)
    if locale is not None:
        if not LOCALE.fullmatch(locale) or len(locale) > 35:
            raise RowRejected(f"bad locale {locale!r}")
        row.locale = locale
    for label in _values(cells.pop("labels", "")):
        if not LABEL.fullmatch(label):
            raise RowRejected(f"bad label {label!r}")
        row.labels.append(label)
    row.labels = list(dict.fromkeys(row.labels))
    for key, value in cells.items():
        if len(value) > 1000:
            raise RowRejected(f"{key}: longer than 1000 characters")
        row.attributes[attribute_key(key)] = value
    return row


def read_rows(text: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and the data rows of a CSV text, each with its line number.
    ValueError when there is no header."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise ValueError("the file is empty") from None
    except csv.Error as error:
        raise ValueError(f"not CSV: {error}") from None
    if not any(header) or len(set(header)) != len(header):
        raise ValueError("the header row must name each column once")
    rows: list[tuple[int, dict[str, str]]] = []
    line = 1
    try:
        for cells in reader:
            line += 1
            if not any(c.strip() for c in cells):
                continue
            rows.append((line, dict(zip(header, cells, strict=False))))
    except csv.Error as error:
        raise ValueError(f"line {line + 1}: not CSV: {error}") from None
    return header, rows


async def import_rows(
    store: Store,
    rows: list[tuple[int, dict[str, str]]],
    *,
    default_region: str = "US",
    progress: Callable[[int, int], None] | None = None,
    batch_size: int = BATCH,
) -> ImportReport:
    """Import parsed CSV rows (from `read_rows`) into the store."""
    report = ImportReport(rows=len(rows))
    for first in range(0, len(rows), batch_size):
        valid: list[ContactRow] = []
        for line, raw in rows[first : first + batch_size]:
            try:
                valid.append(parse_row(line, raw, default_region))
            except RowRejected as error:
                report.reject(line, str(error))
        await _import_batch(store, valid, report)
        if progress is not None:
            progress(min(first + batch_size, len(rows)), len(rows))
    return report


async def import_csv(
    store: Store,
    text: str,
    *,
    default_region: str = "US",
    progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Import a CSV text; ValueError when it is not a CSV with a header."""
    _, rows = read_rows(text)
    return await import_rows(store, rows, default_region=default_region, progress=progress)


@dataclass
class _Touched:
    """A contact a batch merges rows into: the fields to set and values to add."""

    sets: dict[str, Any] = field(default_factory=dict)
    adds: dict[str, list[str]] = field(default_factory=dict)

    def add(self, name: str, values: Iterable[str]) -> None:
        bucket = self.adds.setdefault(name, [])
        bucket.extend(v for v in values if v not in bucket)


async def _import_batch(store: Store, rows: list[ContactRow], report: ImportReport) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row.identity_keys()))
    owners = {
        k: str(d["contact_id"]) for k, d in (await find_by_ids(store.identities, keys)).items()
    }
    existing = await find_by_ids(store.contacts, list(dict.fromkeys(owners.values())))
    created: dict[str, dict[str, Any]] = {}
    touched: dict[str, _Touched] = {}
    new_identities: list[dict[str, Any]] = []
    now = utcnow()
    for row in rows:
        found = {owners[k] for k in row.identity_keys() if k in owners}
        if len(found) > 1:
            report.reject(row.line, "its identities belong to different contacts; merge them first")
            continue
        if found:
            contact_id = found.pop()
            if contact_id not in existing and contact_id not in created:
                report.reject(row.line, "its contact was removed during the import")
                continue
            report.merged += 1
        else:
            contact_id = new_id()
            created[contact_id] = new_contact_doc(contact_id)
            report.created += 1
        for key in row.identity_keys():
            if key not in owners:
                owners[key] = contact_id
                kind, _, value = key.partition(":")
                new_identities.append(
                    {
                        "_id": key,
                        "kind": kind,
                        "value": value,
                        "contact_id": contact_id,
                        "created_at": now,
                    }
                )
        if contact_id in created:
            _apply_to_new(created[contact_id], row)
        else:
            _apply_to_existing(touched.setdefault(contact_id, _Touched()), row)
    if created:
        await store.contacts.insert_many(list(created.values()), ordered=False)
    if new_identities:
        # Another writer may have taken one of these identities in the meantime: its
        # owner keeps it (the contact here keeps the value in its lists only).
        with contextlib.suppress(BulkWriteError):
            await store.identities.insert_many(new_identities, ordered=False)
    updates = []
    for contact_id, change in touched.items():
        update: dict[str, Any] = {}
        if change.sets:
            update["$set"] = change.sets
        if change.adds:
            update["$addToSet"] = {k: {"$each": v} for k, v in change.adds.items()}
        if update:
            updates.append(UpdateOne({"_id": contact_id}, update))
    if updates:
        await store.contacts.bulk_write(updates, ordered=False)


def _apply_to_new(doc: dict[str, Any], row: ContactRow) -> None:
    for name in ("name", "telegram", "birthday", "timezone", "locale"):
        value = getattr(row, name)
        if value is not None:
            doc[name] = value
    for name in ("phones", "emails", "labels"):
        doc[name] = list(dict.fromkeys([*doc[name], *getattr(row, name)]))
    doc["attributes"].update(row.attributes)


def _apply_to_existing(change: _Touched, row: ContactRow) -> None:
    for name in ("name", "telegram", "birthday", "timezone", "locale"):
        value = getattr(row, name)
        if value is not None:
            change.sets[name] = value
    for key, value in row.attributes.items():
        change.sets[f"attributes.{key}"] = value
    for name in ("phones", "emails", "labels"):
        values = getattr(row, name)
        if values:
            change.add(name, values)


# -- export ---------------------------------------------------------------------------


def _cell(value: str, *, phone: bool = False) -> str:
    if value.startswith(FORMULA_START) and not (phone and value.startswith("+")):
        return "'" + value
    return value


def _birthday_text(value: Any) -> str:
    if not isinstance(value, dict) or not value.get("month") or not value.get("day"):
        return ""
    month_day = f"{int(value['month']):02d}-{int(value['day']):02d}"
    return f"{int(value['year']):04d}-{month_day}" if value.get("year") else month_day


async def export_csv(store: Store) -> str:
    """Every contact as CSV, oldest first, with one column per attribute name."""
    docs = await store.contacts.find({}).to_list()
    docs.sort(key=lambda d: (str(d.get("created_at") or ""), str(d["_id"])))
    attributes = sorted({k for d in docs for k in (d.get("attributes") or {})} - set(COLUMNS))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([*COLUMNS, *attributes])
    for doc in docs:
        attrs = doc.get("attributes") or {}
        writer.writerow(
            [
                _cell(doc.get("name") or ""),
                ";".join(_cell(p, phone=True) for p in doc.get("phones") or []),
                ";".join(_cell(e) for e in doc.get("emails") or []),
                _cell(doc.get("telegram") or ""),
                _birthday_text(doc.get("birthday")),
                doc.get("timezone") or "",
                doc.get("locale") or "",
                ";".join(_cell(x) for x in doc.get("labels") or []),
                *(_cell(str(attrs.get(k, ""))) for k in attributes),
            ]
        )
    return out.getvalue()
