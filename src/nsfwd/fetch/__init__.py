"""URL to bytes without ever reaching a private address (server-side request forgery defence).

Every URL passes static checks (scheme, credentials, host spelling), its host name is resolved
once, *every* address it resolves to must be public (or inside an allowed network), and the
connection then goes to an address that was checked: there is no second DNS lookup for a
rebinding attacker to answer differently. TLS still names the URL's host, for SNI and for
certificate verification.

* :mod:`nsfwd.fetch.policy`: which URLs and addresses are allowed (:class:`FetchPolicy`,
  :func:`validate_url`, :func:`check_url`, the errors).
* :mod:`nsfwd.fetch.transport`: the httpx transport that connects only to checked addresses, and
  :func:`safe_async_client` over it (webhook delivery uses it).
* :mod:`nsfwd.fetch.download`: :func:`fetch`, a GET that follows redirects by hand, checking
  every hop, under a size cap and timeouts.

The names callers use are importable from here.
"""

from nsfwd.fetch.download import fetch
from nsfwd.fetch.policy import (
    FETCH_ALLOW_SETTING,
    WEBHOOK_ALLOW_SETTING,
    FetchError,
    FetchFailedError,
    FetchPolicy,
    FetchTimeouts,
    UnsafeURLError,
    address_refusal,
    check_address,
    check_url,
    parse_networks,
    resolve,
    system_resolver,
    validate_url,
    webhook_resolver,
)
from nsfwd.fetch.transport import USER_AGENT, safe_async_client

__all__ = [
    "FETCH_ALLOW_SETTING",
    "USER_AGENT",
    "WEBHOOK_ALLOW_SETTING",
    "FetchError",
    "FetchFailedError",
    "FetchPolicy",
    "FetchTimeouts",
    "UnsafeURLError",
    "address_refusal",
    "check_address",
    "check_url",
    "fetch",
    "parse_networks",
    "resolve",
    "safe_async_client",
    "system_resolver",
    "validate_url",
    "webhook_resolver",
]
