"""What graceful's server side says on the wire and its client (graceful.client) reads.

Kept apart from the server modules so the client imports the names without the lifecycle.
"""

from __future__ import annotations

#: On a 503 sent before the application saw the request (admission shed while warming or over
#: ``max_concurrency``). The request provably did nothing, so a client may retry it whatever its
#: method (graceful.client does), as it may after a refused connection.
SHED_HEADER = "graceful-shed"
SHED_VALUE = "1"
