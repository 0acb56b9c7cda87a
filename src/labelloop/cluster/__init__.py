"""The seed's cluster bootstrap: agents on every machine, a coordinator, ``initial``.

``protocol`` holds the messages agents and the coordinator exchange; ``agent`` is what runs on each
machine (``labelloop agent``); ``coordinator`` is the registration address.
"""

from labelloop.cluster.protocol import (
    InitialAnswer,
    InitialRequest,
    MachineInfo,
    Registration,
    cookie_hash,
)

__all__ = ["InitialAnswer", "InitialRequest", "MachineInfo", "Registration", "cookie_hash"]
