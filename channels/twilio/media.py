"""What a Twilio message may carry, and how an agent's file reaches Twilio: as a
`MediaUrl` Twilio fetches itself, a signed link to the hub's own copy that
expires (`ChannelContext.signed_media_url`, under `public_url`).

Limits (Twilio's "accepted content types for media"): an MMS (SMS inbox) takes
images, audio, video, PDF, vCard or text up to 5 MB, up to 10 files in one
message; WhatsApp takes one file per message: JPEG or PNG images up to 5 MB,
audio, MP4 video and documents (PDF, Office, text) up to 16 MB.
"""

from __future__ import annotations

from hub.ports import FileRefusal

MB = 1024 * 1024
MMS_LIMIT = 5 * MB
MMS_FILES = 10
MMS_TYPES = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/gif",
        "image/bmp",
        "image/webp",
        "audio/mpeg",
        "audio/mp4",
        "audio/ogg",
        "audio/amr",
        "audio/wav",
        "video/mp4",
        "video/3gpp",
        "video/quicktime",
        "application/pdf",
        "text/vcard",
        "text/plain",
    }
)
WHATSAPP_KINDS: tuple[tuple[frozenset[str], int, str], ...] = (
    (frozenset({"image/jpeg", "image/png"}), 5 * MB, "images (JPEG, PNG) up to 5 MB"),
    (
        frozenset({"audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"}),
        16 * MB,
        "audio (AAC, AMR, MP3, M4A, OGG) up to 16 MB",
    ),
    (frozenset({"video/mp4"}), 16 * MB, "video (MP4) up to 16 MB"),
    (
        frozenset(
            {
                "application/pdf",
                "text/plain",
                "application/msword",
                "application/vnd.ms-excel",
                "application/vnd.ms-powerpoint",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            }
        ),
        16 * MB,
        "documents (PDF, Office, text) up to 16 MB",
    ),
)


def refuse_file(medium: str | None, content_type: str, size: int) -> FileRefusal | None:
    plain = content_type.split(";", 1)[0].strip().lower()
    if medium == "whatsapp":
        for types, limit, label in WHATSAPP_KINDS:
            if plain in types:
                if size > limit:
                    return FileRefusal(
                        413, f"{size} bytes is over WhatsApp's limit (Twilio) for {label}"
                    )
                return None
        accepted = "; ".join(label for _, _, label in WHATSAPP_KINDS)
        return FileRefusal(
            415, f"WhatsApp (Twilio) does not send {plain} files; it sends {accepted}"
        )
    if plain not in MMS_TYPES:
        return FileRefusal(
            415,
            f"MMS does not send {plain} files; it sends images, audio, video, PDF, "
            "vCard and text up to 5 MB",
        )
    if size > MMS_LIMIT:
        return FileRefusal(413, f"{size} bytes is over the 5 MB limit of an MMS")
    return None


def files_per_message(medium: str | None) -> int:
    return 1 if medium == "whatsapp" else MMS_FILES
