"""Each channel's outbound file limits (issue 15, point 3), as the README's table
lists them: what `refuse_file` answers (413 for a size over a limit, 415 for a
type the channel does not send, the message naming the limit), per channel and,
for Twilio, per medium. The end-to-end sends against the providers' simulators
are in tests/api/test_media_out.py."""

from __future__ import annotations

import pytest

from channels.email.outbound import refuse_file as email_refuse
from channels.telegram.outbound import refuse_file as telegram_refuse
from channels.twilio.media import files_per_message as twilio_files
from channels.twilio.media import refuse_file as twilio_refuse
from channels.whatsapp.media import refuse_file as whatsapp_refuse

MB = 1024 * 1024


@pytest.mark.parametrize(
    ("content_type", "size", "status", "named"),
    [
        ("image/png", 5 * MB, None, None),
        ("image/png", 5 * MB + 1, 413, "images (JPEG, PNG) up to 5 MB"),
        ("image/webp", 600 * 1024, 413, "stickers (WebP) up to 500 KB"),
        ("audio/ogg", 16 * MB, None, None),
        ("video/mp4", 17 * MB, 413, "video (MP4, 3GPP) up to 16 MB"),
        ("application/pdf", 100 * MB, None, None),
        ("application/pdf", 100 * MB + 1, 413, "up to 100 MB"),
        ("text/html", 10, 415, "WhatsApp does not send text/html files"),
        ("image/svg+xml", 10, 415, "does not send image/svg+xml"),
        ("application/zip", 10, 415, "documents (text, PDF"),
    ],
)
def test_whatsapp_cloud_limits(content_type, size, status, named):
    refusal = whatsapp_refuse(content_type, size)
    if status is None:
        assert refusal is None
    else:
        assert refusal is not None and refusal.status == status
        assert named in refusal.message


def test_telegram_takes_any_type_within_its_upload_sizes():
    assert telegram_refuse("text/html", 50 * MB) is None  # sent as a document
    assert telegram_refuse("image/jpeg", 10 * MB) is None
    photo = telegram_refuse("image/jpeg", 10 * MB + 1)
    assert photo is not None and photo.status == 413 and "10 MB limit for a photo" in photo.message
    big = telegram_refuse("application/pdf", 50 * MB + 1)
    assert big is not None and big.status == 413 and "50 MB" in big.message


def test_twilio_limits_differ_by_medium():
    assert twilio_refuse("sms", "image/gif", 5 * MB) is None
    mms = twilio_refuse("sms", "image/gif", 5 * MB + 1)
    assert mms is not None and mms.status == 413 and "5 MB limit of an MMS" in mms.message
    zipped = twilio_refuse("sms", "application/zip", 10)
    assert zipped is not None and zipped.status == 415
    assert twilio_refuse("whatsapp", "application/pdf", 16 * MB) is None
    gif = twilio_refuse("whatsapp", "image/gif", 10)
    assert gif is not None and gif.status == 415 and "WhatsApp (Twilio)" in gif.message
    assert twilio_files("whatsapp") == 1 and twilio_files("sms") == 10


def test_email_files_must_fit_the_message_once_encoded():
    limit = 4 * MB
    assert email_refuse(limit, 3 * MB) is None  # 4/3 of it fits
    over = email_refuse(limit, 3 * MB + 1)
    assert over is not None and over.status == 413
    assert f"max_message_bytes {limit}" in over.message
