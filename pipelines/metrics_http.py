"""The HTTP side of /metrics: a bearer-token check in front of ``prometheus_client``'s WSGI app, HTTPS when a
certificate is configured, a thread per scrape with a bounded wait, and no access log.

Every scrape must send ``Authorization: Bearer <token>`` (compared in constant time; 401 otherwise, before the
collector runs). The token comes from ``metrics.bearer_token_env`` or ``metrics.bearer_token_file``
(:meth:`pipelines.config.MetricsSection.required_token`); Prometheus sends it with ``authorization:
{credentials_file: ...}``. :mod:`pipelines.metrics` serves the pipeline's collector through it.
"""

from __future__ import annotations

import hmac
import logging
import socket
import ssl
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from cluster.kafka_broker import CACHE_ROOT
from cluster.secrets import generated_secret_file
from pipelines.config import ConfigError, MetricsSection

log = logging.getLogger("pipelines.metrics")

#: The demo's, the benchmarks' and the tests' own /metrics token on this machine, generated on first use (0600).
LOCAL_TOKEN_FILE = CACHE_ROOT / "metrics" / "bearer.token"
#: How long one scrape connection may stay silent (a TLS handshake included) before it is dropped.
CONNECTION_TIMEOUT_S = 30


def local_token_file() -> Path:
    """:data:`LOCAL_TOKEN_FILE`, made on first use: what ``metrics.bearer_token_file`` names in the demo's config."""
    return generated_secret_file(LOCAL_TOKEN_FILE)


def bearer_guard(app: Callable, token: str) -> Callable:
    """``app`` behind ``Authorization: Bearer <token>``: anything else is a 401 before the collector runs."""
    expected = f"Bearer {token}".encode()

    def guarded(environ, start_response):
        given = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace")  # WSGI headers are latin-1
        if hmac.compare_digest(given, expected):
            return app(environ, start_response)
        start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                            ("WWW-Authenticate", 'Bearer realm="judo-metrics"')])
        return [b"401 Unauthorized: send the metrics token as Authorization: Bearer <token>\n"]

    return guarded


class _QuietHandler(WSGIRequestHandler):
    """One scrape: no access log, a bounded wait, and a client that is no TLS client, or gone, just dropped."""

    timeout = CONNECTION_TIMEOUT_S

    def log_message(self, format, *args) -> None:  # noqa: A002 (the base class's name)
        pass

    def handle(self) -> None:
        try:
            if isinstance(self.connection, ssl.SSLSocket):
                self.connection.do_handshake()  # here, in the scrape's own thread, under its timeout
            super().handle()
        except OSError as exc:  # ssl.SSLError, a reset or a timeout
            log.debug("metrics: connection from %s dropped: %s", self.client_address[0], exc)


class _MetricsHttpServer(ThreadingMixIn, WSGIServer):
    """A thread per scrape; under TLS the handshake runs in that thread, so a slow client holds up no other."""

    daemon_threads = True
    ssl_context: ssl.SSLContext | None = None

    def get_request(self):
        conn, address = super().get_request()
        if self.ssl_context is not None:
            conn = self.ssl_context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, address

    def handle_error(self, request, client_address) -> None:
        log.debug("metrics: a scrape from %s failed", client_address[0], exc_info=True)


def tls_context(settings: MetricsSection) -> ssl.SSLContext | None:
    """The server's TLS context when a certificate is configured (TLS 1.2 at least); a bad one is a config error."""
    if settings.ssl_certfile is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(settings.ssl_certfile.expanduser()), str(settings.ssl_keyfile.expanduser()))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"metrics: cannot load ssl_certfile {settings.ssl_certfile} with ssl_keyfile "
                          f"{settings.ssl_keyfile}: {exc}") from None
    return context


def check_metrics_settings(settings: MetricsSection) -> None:
    """Fail now, with :class:`ConfigError`, if :func:`pipelines.metrics.serve_metrics` would: no token (and no
    opt-out), a token that cannot be read, or a certificate that does not load. The runner calls it first thing."""
    if settings.enabled:
        settings.required_token()
        tls_context(settings)


def listen(host: str, port: int, app: Callable, context: ssl.SSLContext | None) -> WSGIServer:
    """``app`` bound to ``host:port`` (HTTPS under ``context``), not yet serving; OSError when the port is taken."""

    class Server(_MetricsHttpServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        ssl_context = context

    return make_server(host.strip("[]"), port, app, Server, handler_class=_QuietHandler)
