"""A gRPC channel to Strata's control plane: plaintext or TLS, a client certificate for mutual
TLS, and a bearer token on every call.

    from strata_channel import open_channel
    channel = open_channel("https://cp.example:50051", ca="ca.pem", token=os.environ["STRATA_TOKEN"])

- TLS when the endpoint is `https://host:port`, or when a CA or a client certificate is given
  with a bare `host:port`: the server's certificate must be signed by the CA file (`ca`), or by
  one of the system's CAs without it. `http://` with a CA or a certificate is refused.
- `cert` and `key` (PEM files, both or neither) are presented to a control plane that verifies
  client certificates.
- `token` is sent as `authorization: Bearer <token>`: call credentials composed with the TLS
  credentials over TLS; over plaintext (only for a control plane on a trusted network) an
  interceptor adds the same header, and the token travels unencrypted.

`add_arguments(parser)` adds `--ca`, `--cert` and `--key` to an argparse parser, and
`from_arguments(args)` opens the channel they describe, with the token from `STRATA_TOKEN`
(environment only: a token on a command line shows in `ps`).
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import re

import grpc

TOKEN_ENV = "STRATA_TOKEN"


class ChannelSettingsError(Exception):
    """The endpoint, a PEM file or the token cannot be used (the message never holds the token)."""


def target(endpoint: str, tls: bool) -> tuple[str, bool]:
    """`(host:port, use TLS)` of an endpoint: `https://`, `http://`, `grpc://` or bare."""
    for prefix, secure in (("https://", True), ("http://", False), ("grpc://", False)):
        if endpoint.startswith(prefix):
            if tls and not secure:
                raise ChannelSettingsError(
                    f"{endpoint}: a CA or client certificate is given but the endpoint is "
                    "plaintext: use https://"
                )
            return endpoint[len(prefix) :].rstrip("/"), secure
    return endpoint, tls


def read_pem(path: str | os.PathLike, what: str, label: str) -> bytes:
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as e:
        raise ChannelSettingsError(f"cannot read the {what} file {path}: {e.strerror}") from None
    if re.search(rb"-----BEGIN [A-Z ]*" + label.encode() + rb"-----", data) is None:
        raise ChannelSettingsError(f"the {what} file {path} holds no PEM {label} block")
    return data


def check_token(token: str, source: str) -> str:
    token = token.strip()
    if not token:
        raise ChannelSettingsError(f"the token from {source} is empty")
    if not all(33 <= ord(c) <= 126 for c in token):
        raise ChannelSettingsError(
            f"the token from {source} holds a space or a character that is not printable ASCII"
        )
    return token


class _ClientCallDetails(
    collections.namedtuple(
        "_ClientCallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class _BearerInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the authorization header to every call of a plaintext channel."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def __repr__(self) -> str:
        return "_BearerInterceptor(***)"

    def _details(self, details):
        metadata = list(details.metadata or []) + [self._header]
        return _ClientCallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)


class _BearerToken(grpc.AuthMetadataPlugin):
    def __init__(self, token: str):
        self._header = (("authorization", f"Bearer {token}"),)

    def __repr__(self) -> str:
        return "_BearerToken(***)"

    def __call__(self, context, callback):
        callback(self._header, None)


def open_channel(
    endpoint: str,
    ca: str | os.PathLike | None = None,
    cert: str | os.PathLike | None = None,
    key: str | os.PathLike | None = None,
    token: str | None = None,
) -> tuple[grpc.Channel, str]:
    """The channel to `endpoint`, and the endpoint as shown in messages (`host:port`)."""
    if (cert is None) != (key is None):
        raise ChannelSettingsError("--cert and --key go together (a certificate and its key)")
    address, tls = target(endpoint, ca is not None or cert is not None)
    if token is not None:
        token = check_token(token, TOKEN_ENV)
    if not tls:
        channel = grpc.insecure_channel(address)
        if token is not None:
            channel = grpc.intercept_channel(channel, _BearerInterceptor(token))
        return channel, address
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca, "CA", "CERTIFICATE") if ca is not None else None,
        private_key=read_pem(key, "client key", "PRIVATE KEY") if key is not None else None,
        certificate_chain=read_pem(cert, "client certificate", "CERTIFICATE")
        if cert is not None
        else None,
    )
    if token is not None:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.metadata_call_credentials(_BearerToken(token))
        )
    return grpc.secure_channel(address, credentials), address


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--ca`, `--cert`, `--key` (the token comes from STRATA_TOKEN only)."""
    parser.add_argument(
        "--ca",
        default=os.environ.get("STRATA_CA") or None,
        help="PEM file of the CA that signed the control plane's certificate: TLS (env STRATA_CA; "
        "an https:// endpoint without it trusts the system's CAs)",
    )
    parser.add_argument(
        "--cert",
        default=os.environ.get("STRATA_CLIENT_CERT") or None,
        help="PEM client certificate for mutual TLS, with --key (env STRATA_CLIENT_CERT)",
    )
    parser.add_argument(
        "--key",
        default=os.environ.get("STRATA_CLIENT_KEY") or None,
        help="PEM private key of --cert (env STRATA_CLIENT_KEY)",
    )


def from_arguments(endpoint: str, args: argparse.Namespace) -> tuple[grpc.Channel, str]:
    """The channel of `add_arguments`' flags, with the token from STRATA_TOKEN if set."""
    token = os.environ.get(TOKEN_ENV) or None
    return open_channel(endpoint, ca=args.ca, cert=args.cert, key=args.key, token=token)
