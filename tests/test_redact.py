"""Passwords are masked wherever a text that may hold one is stored or printed, however it was cut or mangled."""

import logging

import pytest

from jaxrl_lander.config.redact import RedactingFilter, redact, shorten


@pytest.mark.parametrize("text,masked", [
    ("--storage postgresql+psycopg://alice:S3cretPW@db:5432/optuna --jobs 1",
     "--storage postgresql+psycopg://alice:***@db:5432/optuna --jobs 1"),
    ("postgresql:/alice:S3cret@db/optuna", "postgresql:/alice:***@db/optuna"),  # a URL that went through pathlib
    ("postgresql://a:SE@CRET@h/db and a@b", "postgresql://a:***@h/db and a@b"),  # an unescaped '@' in it
    ("host=db password=abc user=x", "host=db password=*** user=x"),
    ("PGPASSWORD=xyz make tune", "PGPASSWORD=*** make tune"),
    ("{'password': 'pw1'}", "{'password': '***'}"),
    # Nothing to mask: left exactly as it is.
    ("postgresql://alice@host/db", "postgresql://alice@host/db"),
    ("sqlite:////tmp/study.db", "sqlite:////tmp/study.db"),
    ("/tmp/a:b@c", "/tmp/a:b@c"),
    ('FATAL:  password authentication failed for user "alice"', 'FATAL:  password authentication failed for user'
                                                               ' "alice"'),
])
def test_redact(text, masked):
    assert redact(text) == masked


def test_a_cut_value_keeps_its_password_masked():
    long = f"postgresql://a:{'S' * 120}@h/db"
    assert shorten(long) == "'postgresql://a:***@h/db'"
    cut = shorten(long + "x" * 200)
    assert cut.startswith("'postgresql://a:***@h/db") and cut.endswith("(225 characters)") and "SS" not in cut


def test_log_lines_are_masked(caplog):
    logger = logging.getLogger("jaxrl_lander.test_redact")
    caplog.handler.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO):
        logger.info("joining %s", "postgresql://alice:S3cret@db/optuna")
    assert caplog.messages == ["joining postgresql://alice:***@db/optuna"]
