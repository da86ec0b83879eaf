"""RS256 tokens through a JWKS URL, and the `backoffice token` command."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from contextlib import redirect_stdout
from http.server import BaseHTTPRequestHandler, HTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from backoffice.auth import Verifier
from backoffice.cli import main
from backoffice.errors import Unauthorized
from backoffice.settings import DEV_JWT_SECRET, ServiceSettings

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    jwk = json.loads(RSAAlgorithm.to_jwk(KEY.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/jwks.json"
    server.shutdown()


def _rs256(key: rsa.RSAPrivateKey, **claims: object) -> str:
    payload = {"sub": "svc", "scope": "orders:read", "exp": int(time.time()) + 60, **claims}
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": "k1"})


class TestJwks:
    def test_an_rs256_token_signed_by_a_published_key_is_accepted(self, jwks_url: str) -> None:
        verifier = Verifier(ServiceSettings(jwks_url=jwks_url))
        principal = verifier.verify(_rs256(KEY, customer_id="c-9"))
        assert principal.scopes == {"orders:read"}
        assert principal.customer_id == "c-9"

    def test_an_rs256_token_signed_by_another_key_is_refused(self, jwks_url: str) -> None:
        with pytest.raises(Unauthorized):
            Verifier(ServiceSettings(jwks_url=jwks_url)).verify(_rs256(OTHER))

    def test_rs256_is_refused_when_no_jwks_is_configured(self) -> None:
        with pytest.raises(Unauthorized, match="algorithm"):
            Verifier(ServiceSettings()).verify(_rs256(KEY))

    def test_an_hs256_token_signed_with_the_public_key_as_secret_is_refused(self, jwks_url: str) -> None:
        with pytest.raises(Unauthorized):
            Verifier(ServiceSettings(jwks_url=jwks_url)).verify(
                jwt.encode(
                    {"sub": "x", "scope": "a", "exp": int(time.time()) + 60}, "not-the-secret" * 4, algorithm="HS256"
                )
            )


class TestTokenCommand:
    def test_prints_a_token_with_the_scopes_customer_and_ttl(self) -> None:
        out = io.StringIO()
        with redirect_stdout(out):
            assert main(["token", "--scope", "orders:read billing:read", "--customer-id", "c-1", "--ttl", "120"]) == 0
        claims = jwt.decode(out.getvalue().strip(), DEV_JWT_SECRET, algorithms=["HS256"])
        assert claims["scope"] == "orders:read billing:read"
        assert claims["customer_id"] == "c-1"
        assert 110 <= claims["exp"] - int(time.time()) <= 120
