"""Synchronous policy client (robot side): numpy + msgpack + websockets only."""

from __future__ import annotations

import inspect
import time
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from deploy.wire import packb, unpackb

_CONNECT_KW = {"proxy": None} if "proxy" in inspect.signature(connect).parameters else {}


def _reason(closed: ConnectionClosed) -> str:
    """The server's close reason if it gave one, else websockets' description of the closure."""
    return closed.rcvd.reason if closed.rcvd is not None and closed.rcvd.reason else str(closed)


class PolicyServerError(RuntimeError):
    """The server answered a request with an error; ``field`` names the offending request field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class PolicyClient:
    """``PolicyClient(host, port, token=None).infer(observation, instruction) -> dict``; ``.metadata`` from the server.

    ``observation`` is ``{"rgb_obs": {camera: uint8 (H, W, 3)}, "state_obs": float (state_dim,)}`` (``state_obs``
    only when ``metadata["state_dim"] > 0``); the reply holds ``actions`` (chunk_length, action_dim) float32,
    ``server_timing`` and ``client_timing`` (ms). ``connect_retry_s`` keeps retrying a refused connection that long
    (handy when the robot starts before the server).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8000, token: str | None = None, *,
                 timeout: float | None = 60.0, open_timeout: float = 10.0, connect_retry_s: float = 0.0,
                 max_size: int = 64 * 2**20):
        host_part = f"[{host}]" if ":" in host and not host.startswith("[") else host
        self.uri = f"ws://{host_part}:{port}"
        self.token = token
        self.timeout = timeout
        self._ws = None
        self._closed_because = "by close()"  # why a later infer() finds no connection
        deadline = time.monotonic() + connect_retry_s
        while True:
            try:
                self._ws = connect(self.uri, compression=None, max_size=max_size, open_timeout=open_timeout,
                                   **_CONNECT_KW)
                break
            except (ConnectionRefusedError, OSError):
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)
        try:
            greeting = self._ws.recv(timeout=open_timeout)
        except ConnectionClosed as e:  # e.g. 1013: the server has max_clients connections already
            self._ws = None
            raise PolicyServerError("connection", f"the server closed the connection: {_reason(e)}") from None
        self.metadata: dict[str, Any] = unpackb(greeting, what="metadata")

    def infer(self, observation: dict[str, Any], instruction: str) -> dict[str, Any]:
        request: dict[str, Any] = {"observation": observation, "instruction": instruction}
        if self.token is not None:
            request["token"] = self.token
        if self._ws is None:
            raise PolicyServerError("connection", f"closed {self._closed_because}; make a new PolicyClient")
        t0 = time.perf_counter()
        try:
            self._ws.send(packb(request))
            message = self._ws.recv(timeout=self.timeout)
        except TimeoutError:
            # the late reply would otherwise be read as the answer to the next request: actions for an old state
            self.close()
            self._closed_because = "after an earlier request timed out"
            raise
        except ConnectionClosed as e:  # e.g. the server's idle_timeout_s, or the server stopped
            self._ws = None
            self._closed_because = f"by the server ({_reason(e)})"
            raise PolicyServerError("connection", f"the server closed the connection ({_reason(e)}); make a new "
                                                  "PolicyClient") from None
        reply = unpackb(message, what="reply")
        if not isinstance(reply, dict):
            raise PolicyServerError("reply", f"expected a map, got {type(reply).__name__}")
        if "error" in reply:
            err = reply["error"] if isinstance(reply["error"], dict) else {"message": str(reply["error"])}
            raise PolicyServerError(str(err.get("field", "request")), str(err.get("message", "")))
        reply["client_timing"] = {"roundtrip_ms": (time.perf_counter() - t0) * 1e3}
        return reply

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
