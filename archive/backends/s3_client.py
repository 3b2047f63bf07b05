"""The S3 backend's connection: the location's settings, one boto3 client, errors mapped once.

Everything the S3 backend asks of the server goes through one boto3 client (thread-safe, one
connection pool sized for the transfer threads; GETs use its signer, credentials and HTTP
session without its per-request machinery, see :mod:`.s3_lean`), made from the standard AWS chain of
credentials and settings: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
``AWS_PROFILE`` (or ``?profile=``), the shared credentials and config files, SSO, web identity,
instance metadata. A location never holds credentials, and none is ever shown or logged.

botocore retries each request in its *standard* mode (dropped connections, timeouts, 5xx,
throttling) with backoff, up to :data:`MAX_ATTEMPTS` attempts; what still fails is mapped by
:func:`s3_errors` to one error of :mod:`archive.errors`.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

from .. import __version__
from ..errors import (ArchiveError, AuthenticationError, BackendError, BackendUnavailableError,
                      CredentialsError, InvalidInputError, KeyExistsError, KeyNotFoundError)
from ..locations import redact, split_userinfo
from ..timeouts import connect_timeout, io_timeout

logger = logging.getLogger(__name__)
MAX_ATTEMPTS = 5  # botocore standard-mode attempts of one request
POOL_CONNECTIONS = 64  # transfer threads x part threads share this pool
UNSAFE_ENV = "ARCHIVE_S3_UNSAFE_NO_CONDITIONAL_WRITES"
_PARAMETERS = {"endpoint", "region", "addressing", "profile", "unsafe_no_conditional_writes"}
_ADDRESSING = {"path", "virtual", "auto"}
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "TokenRefreshRequired",
               "InvalidToken", "AccessDenied", "AllAccessDisabled", "AuthorizationHeaderMalformed",
               "RequestExpired", "ExpiredTokenException", "403"}
EXISTS_CODES = {"PreconditionFailed", "412"}  # 409 ConditionalRequestConflict: see s3_conditional
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_PER_OBJECT_PARAMETERS = frozenset({"Key", "Prefix", "CopySource"})  # endpoint rule parameters that vary per request


@dataclass(frozen=True)
class S3Settings:
    """What an ``s3://`` location says (credentials never among it)."""

    bucket: str
    prefix: str  # "" or "some/folder", without slashes at either end
    endpoint: str | None
    region: str | None
    addressing: str
    profile: str | None
    unsafe_no_conditional_writes: bool


def parse_location(location: str) -> S3Settings:
    """The settings of ``s3://BUCKET[/PREFIX][?endpoint=URL&region=R&addressing=path&profile=P]``.

    Raises
    ------
    InvalidInputError
        Not such a location, an unknown parameter, or credentials written into it.
    """
    shown = redact(location)
    _, userinfo, _ = split_userinfo(location)
    if userinfo is not None:
        raise InvalidInputError(f"{shown}: an s3:// location takes no credentials; give them the AWS way"
                                " (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, AWS_PROFILE)")
    parts = urlsplit(location)
    if parts.scheme.lower() != "s3" or not parts.netloc:
        raise InvalidInputError(f"{shown}: not an s3://bucket/prefix location")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - _PARAMETERS)
    if unknown:
        raise InvalidInputError(f"{shown}: unknown parameter {unknown[0]!r} (known: {', '.join(sorted(_PARAMETERS))})")
    value = {name: values[-1] for name, values in query.items()}
    endpoint = value.get("endpoint") or None
    if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
        raise InvalidInputError(f"{shown}: endpoint must be an http:// or https:// URL")
    addressing = value.get("addressing") or ("path" if endpoint or _env_endpoint() else "auto")
    if addressing not in _ADDRESSING:
        raise InvalidInputError(f"{shown}: addressing must be one of {', '.join(sorted(_ADDRESSING))}")
    unsafe = value.get("unsafe_no_conditional_writes", os.environ.get(UNSAFE_ENV, ""))
    prefix = parts.path.strip("/")
    if any(part in (".", "..") or not part for part in prefix.split("/")) and prefix:
        raise InvalidInputError(f"{shown}: the prefix has an empty, '.' or '..' part")
    return S3Settings(parts.netloc, prefix, endpoint, value.get("region") or None, addressing,
                      value.get("profile") or None, unsafe.strip().lower() in ("1", "true", "yes"))


def _env_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def make_client(settings: S3Settings, shown: str) -> Any:
    """A boto3 S3 client for ``settings``: the AWS credentials chain, standard retries, timeouts.

    Raises
    ------
    InvalidInputError
        boto3 is not installed, or the profile named does not exist.
    """
    try:  # botocore alone: boto3 would add its own import and s3transfer's (50 ms) to every command
        import botocore.exceptions
        import botocore.session
        from botocore.config import Config
    except ImportError:
        raise InvalidInputError("s3:// locations need boto3: pip install 'archive[s3]'") from None
    core = botocore.session.get_session()  # a new session, this client's own
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_parse_timestamp)
    config = Config(retries=_retries(),
                    max_pool_connections=POOL_CONNECTIONS, connect_timeout=connect_timeout(),
                    read_timeout=io_timeout(), s3={"addressing_style": settings.addressing},
                    request_checksum_calculation="when_required",  # sha256 above the backend checks every byte
                    response_checksum_validation="when_required",
                    user_agent=f"archive/{__version__} {core.user_agent()}")  # built once, not per request
    try:
        if settings.profile:
            core.set_config_variable("profile", settings.profile)
        region = settings.region or core.get_config_variable("region") or "us-east-1"
        client = core.create_client("s3", region_name=region, endpoint_url=settings.endpoint, config=config)
        _sign_checksummed_bodies_once(client)
        _resolve_endpoints_per_bucket(client, core.get_component("data_loader"))
        return client
    except botocore.exceptions.ProfileNotFound as exc:
        raise InvalidInputError(f"{shown}: {exc}") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise InvalidInputError(f"{shown}: cannot set up the S3 client: {_one_line(exc)}") from None


def _parse_timestamp(value: str) -> datetime.datetime:
    """A time of an S3 answer: the RFC 1123 form of headers (``Last-Modified``) by the standard
    library, anything else by botocore's parser (dateutil's, which cost 6 % of a HEAD's CPU)."""
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.tzinfo is None:  # not that form, or no zone: botocore decides
        from botocore.utils import parse_timestamp

        return parse_timestamp(value)
    return parsed


def _sign_checksummed_bodies_once(client: Any) -> None:
    """Let a request that carries ``x-amz-checksum-sha256`` go with ``UNSIGNED-PAYLOAD``.

    SigV4 signs a hash of the body: botocore hashes every byte of each PUT for it (always
    over http; over https unless a checksum header is there). A PUT of the S3 backend carries
    the body's sha256 in ``x-amz-checksum-sha256`` (a blob's is its name, see
    :func:`.s3_io.payload_checksum`), a header that is signed and that the server checks the
    body against, so the body is as well protected without that second pass over it: this
    makes botocore's own https rule hold over http too, for such requests only.
    """
    from botocore.config import Config

    unsigned = client.meta.config.merge(Config(s3={**(client.meta.config.s3 or {}), "payload_signing_enabled": False}))

    def before_sign(request: Any, **_: Any) -> None:
        if "x-amz-checksum-sha256" in request.headers:
            request.context["client_config"] = unsigned

    client.meta.events.register("before-sign.s3", before_sign)


class _EndpointsPerBucket:
    """botocore's endpoint provider, asked without the parameters its rules never read.

    botocore resolves the endpoint of every request by evaluating S3's endpoint rules, and
    caches the answer by the request's parameters, which include the object key: every new key
    missed the cache, and the rules cost about a quarter of the client's CPU per request
    (0.3-0.6 ms of 1.5-2). The rules read no ``Key``, ``Prefix`` or ``CopySource``; asked
    without them, the answer is cached once per bucket and operation.
    """

    def __init__(self, provider: Any, unread: frozenset[str]) -> None:
        self._provider, self._unread = provider, unread

    def resolve_endpoint(self, **parameters: Any) -> Any:
        for name in self._unread.intersection(parameters):
            del parameters[name]
        return self._provider.resolve_endpoint(**parameters)


def _resolve_endpoints_per_bucket(client: Any, loader: Any) -> None:
    """Wrap the client's endpoint provider in :class:`_EndpointsPerBucket` (when botocore has one
    where this botocore keeps it; otherwise requests only cost more). ``loader``: the session's
    data loader, which has the rules in memory since the client was made."""
    resolver = getattr(client, "_ruleset_resolver", None)
    provider = getattr(resolver, "_provider", None)
    unread = _unread_endpoint_parameters(loader)
    if provider is not None and hasattr(provider, "resolve_endpoint") and unread:
        resolver._provider = _EndpointsPerBucket(provider, unread)


_UNREAD: list[frozenset[str]] = []  # the answer of _unread_endpoint_parameters, once per process


def _unread_endpoint_parameters(loader: Any) -> frozenset[str]:
    """The per-object parameters of S3's endpoint rules that no rule reads, by a look at the
    rules of the botocore installed (a reference is ``{"ref": NAME}`` or ``{NAME}`` in a template).

    Asked of the session's own loader, which read the rules to make the client: a new loader
    read them again and listed botocore's data folders anew (40-60 ms of every command's start).
    """
    if not _UNREAD:
        _UNREAD.append(_unread_in_rules(loader))
    return _UNREAD[0]


def _unread_in_rules(loader: Any) -> frozenset[str]:
    import botocore.exceptions

    try:
        rules = loader.load_service_model("s3", "endpoint-rule-set-1")
    except botocore.exceptions.DataNotFoundError as exc:  # only means: keep botocore's way
        logger.debug("cannot read S3's endpoint rules (%s); endpoints resolved per request", exc)
        return frozenset()
    text = json.dumps(rules.get("rules", []))
    return frozenset(name for name in _PER_OBJECT_PARAMETERS & set(rules.get("parameters", {}))
                     if f'"ref": "{name}"' not in text and f"{{{name}}}" not in text and f"{{{name}#" not in text)


def _retries() -> dict[str, Any] | None:
    """botocore's standard retries, unless the user set retries the AWS way (env or profile)."""
    if os.environ.get("AWS_MAX_ATTEMPTS") or os.environ.get("AWS_RETRY_MODE"):
        return None
    return {"mode": "standard", "max_attempts": MAX_ATTEMPTS}


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ``ClientError`` (``NoSuchKey``, ``412``...), else ""."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


@contextmanager
def s3_errors(where: str, key: str | None = None, bucket: str = "") -> Iterator[None]:
    """Map what botocore raises inside to one error of :mod:`archive.errors`.

    ``where`` names the thing for messages (the archive's location); ``key`` the object asked
    for, so that a missing object is :class:`KeyNotFoundError` and a lost conditional write
    :class:`KeyExistsError`.
    """
    import botocore.exceptions as bce

    try:
        yield
    except ArchiveError:
        raise
    except bce.ClientError as exc:
        raise _client_error(exc, where, key, bucket) from None
    except bce.NoCredentialsError:
        raise CredentialsError(f"{where}: no AWS credentials found (set AWS_ACCESS_KEY_ID and"
                               " AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or ~/.aws/credentials)") from None
    except RuntimeError as exc:  # botocore's refresh of temporary credentials (SSO, roles, processes)
        if "credentials" not in str(exc).lower():
            raise
        raise CredentialsError(f"{where}: the AWS credentials have expired and could not be renewed"
                               f" ({_one_line(exc)}); renew them (aws sso login, a new session token)") from None
    except (bce.EndpointConnectionError, bce.ConnectTimeoutError, bce.ReadTimeoutError,
            bce.ConnectionClosedError, bce.ConnectionError) as exc:
        raise BackendUnavailableError(f"{where}: cannot reach the S3 server ({_one_line(exc)})") from None
    except bce.BotoCoreError as exc:
        raise BackendError(f"{where}: {_one_line(exc)}") from None


def _client_error(exc: BaseException, where: str, key: str | None, bucket: str) -> ArchiveError:
    code = error_code(exc)
    status = (getattr(exc, "response", None) or {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if code == "NoSuchBucket":
        return BackendError(f"{where}: the bucket {bucket!r} does not exist")
    if key is not None and code in _MISSING_CODES:
        return KeyNotFoundError(key)
    if key is not None and code in EXISTS_CODES:
        return KeyExistsError(key)
    if code in _AUTH_CODES or status in (401, 403):
        return AuthenticationError(f"{where}: access refused ({code or status}); check the AWS credentials"
                                   " (AWS_ACCESS_KEY_ID, AWS_PROFILE, ~/.aws/credentials) and their rights")
    if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError"):
        return BackendUnavailableError(f"{where}: server error ({code or status})")
    return BackendError(f"{where}: S3 error {code or status}: {_one_line(exc)}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__
