"""The exception tree of triotrade. Each error says whose fault it is.

::

    TriotradeError
    ├── WireError          bad data from the peer or a feed: names the message
    │                      type and the field path (``$.payload.bid``)
    ├── FeedError          a recorded feed that cannot be read (strict mode,
    │                      truncated gzip, missing file): names file and line
    ├── ConfigError        a bad YAML file: names the dotted key
    ├── AuthError          a token or login refused (``adapters.sim.auth``): says why,
    │                      never shows the token
    ├── VenueError         a live venue that cannot be used: unreachable, or it
    │                      refused the login or the connection (``status``)
    └── UsageError         a bug of ours or of a strategy author: an illegal
        │                  call, never the peer's fault
        └── IllegalTransition   an order moved in a way the lifecycle forbids

A venue's refusal is not an exception (it is an ``error`` event), and a risk
denial is a value (``risk.Denied``) that reaches ``Strategy.on_reject``.
"""

from __future__ import annotations

from engine.enums import ErrorCode


class TriotradeError(Exception):
    """Base of every error triotrade raises on purpose."""


class WireError(TriotradeError):
    """A message that is not what PROTOCOL.md says.

    Attributes:
        msg_type: the envelope ``type`` if it could be read, else None.
        path: where in the message, e.g. ``$.payload.bid`` (None: the whole).
        detail: what was wrong.
        code: the PROTOCOL error code a server answers this with.
    """

    def __init__(
        self,
        detail: str,
        *,
        msg_type: str | None = None,
        path: str | None = None,
        code: ErrorCode = ErrorCode.BAD_REQUEST,
    ) -> None:
        self.msg_type = msg_type
        self.path = path
        self.detail = detail
        self.code = code
        where = f" at `{path}`" if path else ""
        what = f"{msg_type!r} message" if msg_type else "message"
        super().__init__(f"bad {what}: {detail}{where}")


class FeedError(TriotradeError):
    """A recorded feed that cannot be read (or a bad line under ``--strict``)."""

    def __init__(self, detail: str, *, path: str | None = None, line: int | None = None):
        self.path = path
        self.line = line
        self.detail = detail
        where = "".join(
            [f"{path}" if path else "", f":{line}" if line is not None else ""]
        )
        super().__init__(f"{where}: {detail}" if where else detail)


class ConfigError(TriotradeError):
    """A configuration value that is missing, unknown or of the wrong type.

    Attributes:
        key: the dotted path of the offending key, e.g. ``risk.max_order_qty``.
    """

    def __init__(self, key: str, detail: str) -> None:
        self.key = key
        self.detail = detail
        super().__init__(f"{key}: {detail}" if key else detail)


class VenueError(TriotradeError):
    """A live venue that cannot be used: unreachable, or refusing us.

    Attributes:
        status: the HTTP status (401: bad credentials or token) or the
            WebSocket close code that said so, if any.
        auth: True when it is an authentication refusal (401 / 4401).
    The message never holds a token or a password.
    """

    def __init__(self, detail: str, *, status: int | None = None, auth: bool = False) -> None:
        self.detail = detail
        self.status = status
        self.auth = auth
        super().__init__(detail)


class UsageError(TriotradeError):
    """An API used the wrong way: a bug in our code or in a strategy."""


class IllegalTransition(UsageError):
    """An order event the lifecycle table does not allow from the current state."""

    def __init__(self, order_id: str, state: str, status: str) -> None:
        self.order_id = order_id
        self.state = state
        self.status = status
        super().__init__(f"order {order_id}: {status} is not allowed from {state}")
