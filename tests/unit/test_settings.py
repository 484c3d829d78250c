"""Settings refuse what they cannot mean: one sentence, the variable named, nothing secret shown."""

from __future__ import annotations

import pytest

from contract.errors import BadInput
from contract.settings import MAX_CONCURRENCY, MAX_PAGE_SIZE, Settings


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"PLEO_HTTP_TIMEOUT": "nan"}, "PLEO_HTTP_TIMEOUT must be a number, not 'nan'."),
        ({"PLEO_BACKOFF_INITIAL": "NaN"}, "PLEO_BACKOFF_INITIAL must be a number, not 'NaN'."),
        ({"PLEO_LEASE_WAIT": "inf"}, "PLEO_LEASE_WAIT must be a number, not 'inf'."),
        ({"PLEO_RETRY_BUDGET": "1e999"}, "PLEO_RETRY_BUDGET must be a finite number, not '1e999'."),
        ({"PLEO_PAGE_SIZE": "\u0663"}, "PLEO_PAGE_SIZE must be a whole number, not '\u0663'."),
        ({"PLEO_PAGE_SIZE": "1.5"}, "PLEO_PAGE_SIZE must be a whole number, not '1.5'."),
        (
            {"PLEO_PAGE_SIZE": "99999999999999999999999"},
            f"PLEO_PAGE_SIZE must be at most {MAX_PAGE_SIZE}, not '99999999999999999999999'.",
        ),
        ({"PLEO_PAGE_SIZE": "0"}, "PLEO_PAGE_SIZE must be at least 1, not '0'."),
        ({"PLEO_PAGE_CONCURRENCY": "0"}, "PLEO_PAGE_CONCURRENCY must be at least 1, not '0'."),
        (
            {"PLEO_PAGE_CONCURRENCY": "64"},
            f"PLEO_PAGE_CONCURRENCY must be at most {MAX_CONCURRENCY}, not '64'.",
        ),
        (
            {"REDIS_URL": "garbage"},
            "REDIS_URL must be a Redis URL (redis://, rediss://, sentinel://, unix://), "
            "not 'garbage'.",
        ),
        ({"REDIS_URL": "redis://host:notaport/5"}, "REDIS_URL is not a valid URL"),
        (
            {"CELERY_BROKER_URL": "garbage://x"},
            "CELERY_BROKER_URL must be a broker URL (redis://, amqp://, ...), not 'garbage://x'.",
        ),
        ({"PLEO_API_URL": "http://[::1"}, "PLEO_API_URL is not a valid URL (Invalid IPv6 URL)"),
        ({"PLEO_API_URL": "ftp://pleo"}, "PLEO_API_URL must be an http(s) URL"),
        ({"PLEO_API_URL": "https://"}, "PLEO_API_URL names no host: 'https://'."),
        (
            {"PLEO_MESSAGE_SCHEMA": "3"},
            "PLEO_MESSAGE_SCHEMA must be 'auto', '1', '2', not '3'.",
        ),
        (
            {"ERP_MESSAGE_SCHEMAS": "1,3"},
            "ERP_MESSAGE_SCHEMAS must list schemas 1 and 2, not '1,3'.",
        ),
        (
            {"ERP_MESSAGE_SCHEMAS": ","},
            "ERP_MESSAGE_SCHEMAS must list schemas 1 and 2, not ','.",
        ),
        (
            {"PLEO_RABBITMQ_QUEUE_TYPE": "mirrored"},
            "PLEO_RABBITMQ_QUEUE_TYPE must be 'classic' or 'quorum', not 'mirrored'.",
        ),
    ],
)
def test_a_setting_that_cannot_mean_anything_is_refused(env: dict[str, str], words: str) -> None:
    """Each refusal is BadInput (exit 2) with one sentence that names the variable."""
    with pytest.raises(BadInput) as refused:
        Settings.from_env(env)
    assert refused.value.exit_code == 2
    assert str(refused.value).startswith(words)
    assert str(refused.value).count(".") >= 1


def test_a_refused_url_never_shows_its_password() -> None:
    """A malformed URL is quoted with its password masked, even when it cannot be parsed."""
    for url in ("redis://user:s3cret-pw@host:notaport/1", "redis://:s3cret-pw@[::1/0"):
        with pytest.raises(BadInput) as refused:
            Settings.from_env({"REDIS_URL": url})
        assert "s3cret-pw" not in str(refused.value)
        assert "***" in str(refused.value)


def test_long_input_is_cut_short_in_the_sentence() -> None:
    """A 10,000-character value is quoted in part, with its length: not echoed whole."""
    with pytest.raises(BadInput) as refused:
        Settings.from_env({"PLEO_ORDERING": "x" * 10_000})
    assert len(str(refused.value)) < 200
    assert "(10000 characters)" in str(refused.value)


def test_ordinary_values_still_pass() -> None:
    """Digits with spaces around, signs, exponents and every broker kombu knows are accepted."""
    settings = Settings.from_env(
        {
            "PLEO_PAGE_SIZE": " 1000 ",
            "PLEO_HTTP_TIMEOUT": "2.5e1",
            "PLEO_BACKOFF_INITIAL": ".5",
            "CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
            "REDIS_URL": "rediss://:pw@cache.internal:6380/2",
        }
    )
    assert (settings.page_size, settings.http_timeout, settings.backoff_initial) == (
        1000,
        25.0,
        0.5,
    )
    assert Settings.from_env({"CELERY_BROKER_URL": "sqs://"}).broker_url == "sqs://"
    schemas = Settings.from_env({"PLEO_MESSAGE_SCHEMA": " 2 ", "ERP_MESSAGE_SCHEMAS": "1"})
    assert (schemas.message_schema, schemas.reads_schemas) == (2, frozenset({1}))
    defaults = Settings.from_env({})
    assert (defaults.message_schema, defaults.reads_schemas) == (None, frozenset({1, 2}))
    assert defaults.rabbitmq_queue_type == "classic"
    assert Settings.from_env({"PLEO_RABBITMQ_QUEUE_TYPE": " quorum "}).rabbitmq_queue_type == (
        "quorum"
    )
    assert defaults.page_concurrency == 4
    assert Settings.from_env({"PLEO_PAGE_CONCURRENCY": "1"}).page_concurrency == 1


def test_the_enqueue_api_token_is_read_and_never_shown() -> None:
    """PLEO_ENQUEUE_API_TOKEN is read into Settings, and its repr masks it like every secret."""
    token = "3f9c2a7e41b8d6059e1c7a4b2d8f6e03"
    settings = Settings.from_env({"PLEO_ENQUEUE_API_TOKEN": token})
    assert settings.enqueue_api_token == token
    assert token not in repr(settings)
    assert "enqueue_api_token='***'" in repr(settings)
    assert Settings.from_env({"PLEO_ENQUEUE_API_TOKEN": ""}).enqueue_api_token is None
