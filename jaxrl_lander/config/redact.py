"""Secrets out of every text the tool stores or prints: a password in a URL (a study storage's
`postgresql://user:password@host/db`) or in a key=value connection string, wherever such a text came from (a
command line read from /proc, a driver's error message, a trial's failure)."""

import logging
import re

MASK = "***"

# scheme://user:password@host -- the password runs to the last '@' before whitespace (a raw '@' in it is a
# user's slip a URL parser forgives); scheme:/ too, as a URL given where a path was expected comes back from
# pathlib with its '//' folded into one '/'
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://?[^\s:/@]*:)(?P<secret>\S*)(?=@)")
# password=..., PGPASSWORD=..., ?password=...&, and the same with ':' (a dict's repr, a YAML line)
_KEY_VALUE = re.compile(r"(?P<head>(?i:\b\w*password\w*)['\"]?\s*[=:]\s*['\"]?)(?P<secret>[^\s&'\",;]+)")


def redact(text: str) -> str:
    """`text` with every password it holds replaced by ***."""
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK, text)
    return _KEY_VALUE.sub(lambda m: m["head"] + MASK, text)


def shorten(value: object, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters: a value named in a one-line message, however long it is."""
    text = redact(repr(value))  # before the cut, which could leave a password without the '@' that marks it
    return text if len(text) <= limit else f"{text[:limit - 15]}... ({len(text)} characters)"


class RedactingFilter(logging.Filter):
    """A log filter that masks passwords in each record's message (the record is rendered once, here)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, ()
        return True
