"""Deployment of VPP policies: a websocket + msgpack policy server, a small client and a robot-loop example.

    from deploy import PolicyClient
    with PolicyClient("127.0.0.1", 8000) as client:
        print(client.metadata)
        actions = client.infer({"rgb_obs": {...}, "state_obs": state}, "pick up the cup")["actions"]

The client side needs only numpy, msgpack and websockets (no torch). See docs/CUSTOM_ROBOT.md ("Deployment").
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1

from deploy.client import PolicyClient, PolicyServerError  # noqa: E402

__all__ = ["PolicyClient", "PolicyServerError", "PROTOCOL_VERSION", "__version__"]
