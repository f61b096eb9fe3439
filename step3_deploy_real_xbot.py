"""Deploy a stage-2 VPP policy on a real robot.

In-process (the original's interface)::

    from step3_deploy_real_xbot import XbotAgent
    agent = XbotAgent(checkpoint_dir, video_model_path, clip_model_path, device="cuda:0")  # compiles: minutes
    delta = agent.run_3image(img_high, img_left, img_right, text, state)     # (1, 8, 38) normalised, relative
    targets = agent.calculate_absolute_action(delta, state)                 # (8, 38) absolute, robot units

As a policy server (robot code talks to it with deploy.PolicyClient, see deploy/robot_loop_example.py)::

    python step3_deploy_real_xbot.py serve --checkpoint DIR --video_model_path V --clip_model_path C \
        [--host 127.0.0.1 --port 8000 --token T]
"""

from __future__ import annotations

import argparse
import sys

from deploy.images import letterbox_4x3  # noqa: F401  (re-exported)
from deploy.xbot_agent import XbotAgent  # noqa: F401  (re-exported: the original's import path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    from deploy.server import add_server_args, run_server_from_args

    s = sub.add_parser("serve", help="serve the checkpoint over websockets (deploy/server.py)")
    add_server_args(s)
    args = p.parse_args(argv)
    if args.command == "serve":
        if not args.checkpoint:
            p.error("serve needs --checkpoint")
        run_server_from_args(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
