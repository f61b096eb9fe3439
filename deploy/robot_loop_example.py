"""Robot-side control loop against a policy server: action chunking with a replan period, on a toy robot.

    python deploy/robot_loop_example.py                         # spins up a fake-policy server in-process
    python deploy/robot_loop_example.py --port 8000 [--token T] # talks to a running server (python -m deploy.server)

Every ``replan_period`` control steps (<= chunk length) the loop grabs the camera images and the current state,
asks the server for a chunk, and executes its first ``replan_period`` actions. The actions are xbot-style: each row
is *relative to the state sent with the request* (not to the previous row), so the commanded target of row k is
``state_at_request + action[k]``. With quaternion arm poses use policy_models.normalization.absolute_actions (the
server's metadata says which relative_mode the model was trained with). Replace ToyRobot with your robot driver.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.client import PolicyClient  # noqa: E402


class ToyRobot:
    """A point in R^D that moves to each commanded target (with a first-order lag), and fake cameras."""

    def __init__(self, state_dim: int, image_shapes: dict, seed: int = 0, lag: float = 0.8):
        rng = np.random.default_rng(seed)
        self.state = rng.uniform(-1.0, 1.0, state_dim)
        self.image_shapes = {cam: tuple(s if s is not None else d for s, d in zip(shape, (96, 96, 3)))
                             for cam, shape in image_shapes.items()}
        self.lag = lag

    def observe(self) -> tuple[dict, np.ndarray]:
        level = np.uint8(np.clip(127.5 * (1.0 + np.tanh(self.state[:1].mean() if self.state.size else 0.0)), 0, 255))
        images = {cam: np.full(shape, level, dtype=np.uint8) for cam, shape in self.image_shapes.items()}
        return images, self.state.copy()

    def command(self, target: np.ndarray) -> None:
        self.state = self.state + self.lag * (target - self.state)


def run_loop(client: PolicyClient, instruction: str, steps: int, replan_period: int, seed: int = 0) -> dict:
    md = client.metadata
    chunk, state_dim = int(md["chunk_length"]), int(md["state_dim"])
    if not 1 <= replan_period <= chunk:
        raise ValueError(f"replan_period must be in 1..{chunk} (the chunk length), got {replan_period}")
    if state_dim != int(md["action_dim"]):
        raise ValueError("this toy loop needs state_dim == action_dim (state-relative actions)")
    robot = ToyRobot(state_dim, md["image_shapes"], seed=seed)
    start_dist = float(np.linalg.norm(robot.state))
    latencies, requests = [], 0
    actions = anchor = None
    for t in range(steps):
        k = t % replan_period
        if k == 0:
            images, anchor = robot.observe()
            reply = client.infer({"rgb_obs": images, "state_obs": anchor.astype(np.float32)}, instruction)
            actions = reply["actions"]
            latencies.append(reply["client_timing"]["roundtrip_ms"])
            requests += 1
        robot.command(anchor + actions[k])
    return {"steps": steps, "replan_period": replan_period, "requests": requests,
            "start_distance_to_goal": start_dist, "final_distance_to_goal": float(np.linalg.norm(robot.state)),
            "median_roundtrip_ms": float(np.median(latencies))}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="server port (default: start a fake-policy server)")
    p.add_argument("--token", default=None)
    p.add_argument("--instruction", default="move to the goal")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--replan_period", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    thread = None
    port = args.port
    if port is None:
        from deploy.fake_policy import FakePolicy
        from deploy.server import PolicyServer

        fake = FakePolicy(cameras=("cam_high", "cam_left", "cam_right"), action_dim=7, chunk_length=8, state_dim=7,
                          image_shapes={c: (120, 160, 3) for c in ("cam_high", "cam_left", "cam_right")})
        thread = PolicyServer(fake, host="127.0.0.1", port=0, token=args.token).start_in_thread()
        port = thread.port
    try:
        t0 = time.perf_counter()
        with PolicyClient(args.host, port, token=args.token, connect_retry_s=5.0) as client:
            summary = run_loop(client, args.instruction, args.steps, args.replan_period, args.seed)
        summary["wall_s"] = time.perf_counter() - t0
    finally:
        if thread is not None:
            thread.stop()
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
