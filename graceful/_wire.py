"""What graceful's server side says on the wire and its client (graceful.client) reads.

Kept apart from the server modules so the client imports the names without the lifecycle.
"""

from __future__ import annotations

#: On a 503 sent before the application saw the request (admission shed while warming or over
#: ``max_concurrency``). The request provably did nothing, so a client may retry it whatever its
#: method (graceful.client does), as it may after a refused connection.
SHED_HEADER = "graceful-shed"
SHED_VALUE = "1"

#: On every response while the instance drains: ``Graceful-Drain: <seconds of drain delay left>``
#: (a non-negative integer, rounded up; 0 once the delay is over). A client balancing across
#: instances itself (graceful.client with ``endpoints=``) stops choosing this one for new requests
#: on the first response that carries it, instead of waiting for its registry or DNS to drop it.
DRAIN_HEADER = "graceful-drain"
#: Envoy's header: with active health checking, a response carrying it fails the host's health
#: check at once (sent while draining when ``Settings.envoy_immediate_fail`` is on).
ENVOY_IMMEDIATE_FAIL_HEADER = "x-envoy-immediate-health-check-fail"
