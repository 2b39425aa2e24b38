"""The MAAS API 2.0 reader of `plan --maas`: three signed GETs, their JSON, nothing else.

MAAS authenticates API 2.0 requests with OAuth 1.0a, PLAINTEXT signature: the API key is
`consumer_key:token_key:token_secret` and the consumer secret is empty, so the signature is
`&token_secret` (python-libmaas, maas/client/utils `OAuthSigner`; juju/gomaasapi, oauth.go).
`machines`, `subnets` and `spaces` each answer the whole collection as one JSON list: API 2.0
pages none of them (canonical/maas, src/maasserver/api; only `events` takes a `limit`).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from oauthlib import oauth1

API_PATH = "api/2.0/"
COLLECTIONS = ("machines", "subnets", "spaces")
TIMEOUT = 30.0


class MaasApiError(Exception):
    """MAAS could not be read: one line saying why, never the key."""


@dataclass(frozen=True, repr=False)
class ApiKey:
    """A MAAS API key, as `maas apikey` prints it."""

    consumer_key: str
    token_key: str
    token_secret: str

    @classmethod
    def parse(cls, text: str) -> ApiKey:
        """Split `consumer_key:token_key:token_secret`; anything else is refused."""
        parts = text.strip().split(":")
        if len(parts) != 3 or not all(parts):
            raise MaasApiError(
                "--api-key: expected CONSUMER_KEY:TOKEN_KEY:TOKEN_SECRET"
                " (as `maas apikey --username NAME` prints it)"
            )
        return cls(*parts)

    def authorization(self, url: str) -> str:
        """The `Authorization` header of a GET of `url`."""
        client = oauth1.Client(
            self.consumer_key,
            client_secret="",
            resource_owner_key=self.token_key,
            resource_owner_secret=self.token_secret,
            signature_method=oauth1.SIGNATURE_PLAINTEXT,
            realm="OAuth",
        )
        _, headers, _ = client.sign(url, "GET")
        return headers["Authorization"]


def api_root(url: str) -> str:
    """`http://host:5240/MAAS` (or the same with `/api/2.0/`) as the API 2.0 root URL."""
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise MaasApiError(f"--maas: '{url}' is not an http(s) URL such as http://HOST:5240/MAAS")
    path = parsed.path.rstrip("/").removesuffix("/api/2.0")
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, f"{path}/{API_PATH}", "", ""))


def read_collection(root: str, name: str, key: ApiKey) -> list[Any]:
    """GET one collection (`machines`, ...) and return its JSON list."""
    url = f"{root}{name}/"
    request = urllib.request.Request(
        url, headers={"Authorization": key.authorization(url), "Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            body = response.read()
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise MaasApiError(
                f"{url}: MAAS refused the API key (HTTP {e.code} {e.reason})"
            ) from None
        raise MaasApiError(f"{url}: HTTP {e.code} {e.reason}: is this MAAS?") from None
    except urllib.error.URLError as e:
        raise MaasApiError(f"cannot reach MAAS at {url}: {_reason(e.reason)}") from None
    except OSError as e:
        raise MaasApiError(f"cannot reach MAAS at {url}: {_reason(e)}") from None
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MaasApiError(f"{url}: the answer is not JSON: is this MAAS?") from None
    if not isinstance(data, list):
        raise MaasApiError(f"{url}: expected a JSON list, as MAAS API 2.0 answers")
    return data


def _reason(reason: object) -> str:
    text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
    return " ".join(str(text).split())


def read_cloud(url: str, key: ApiKey) -> dict[str, list[Any]]:
    """Machines, subnets and spaces of a MAAS: what a saved dump (`--maas-json`) holds."""
    root = api_root(url)
    return {name: read_collection(root, name, key) for name in COLLECTIONS}
