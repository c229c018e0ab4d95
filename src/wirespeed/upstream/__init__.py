"""The upstream side: a connection pool, an HTTP/1.1 client on it, and bounded batches.

``wirespeed fetch`` is built from these three: ``from wirespeed.upstream.fetch import fetch``
(not re-exported here, so the module and the function keep one name each, and
``python -m wirespeed.upstream.fetch`` runs without a double import).
"""

from wirespeed.upstream.batch import join_all
from wirespeed.upstream.client import (
    BodyTooLarge,
    Client,
    ConnectionLost,
    InvalidURL,
    ProtocolError,
    Response,
    StatusError,
    StreamingResponse,
    Timeouts,
    parse_url,
)
from wirespeed.upstream.pool import (
    ConnectError,
    Connection,
    Origin,
    Pool,
    PoolClosed,
    PoolStats,
    UpstreamError,
    UpstreamTimeout,
)

__all__ = [
    "BodyTooLarge",
    "Client",
    "ConnectError",
    "Connection",
    "ConnectionLost",
    "InvalidURL",
    "Origin",
    "Pool",
    "PoolClosed",
    "PoolStats",
    "ProtocolError",
    "Response",
    "StatusError",
    "StreamingResponse",
    "Timeouts",
    "UpstreamError",
    "UpstreamTimeout",
    "join_all",
    "parse_url",
]
