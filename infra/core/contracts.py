"""Names every stage agrees on, defined once: the wire and table contracts' constants."""

from __future__ import annotations

from typing import Final

# The instance name of a service-wide window on `fs.features` and in ClickHouse `features`.
SERVICE_WIDE: Final = "*"

# HAProxy's server weights run 0..256; a weight of 0 takes the server out of rotation.
HAPROXY_MAX_WEIGHT: Final = 256
