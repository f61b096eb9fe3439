"""Measure the simulator: env steps/s (both cameras, CPU) and the scripted expert's per-task success rate.

    python -m vpp_sim.benchmark --trials 20 [--tasks a,b] [--speed-steps 300]

Prints one JSON object: {"steps_per_s": {...}, "expert": {task: {"success", "trials", "mean_steps"}}}.
Expert trials run without cameras (rendering does not change the physics); trial i of every task uses seed 1000 + i.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def measure_speed(steps: int = 300, seed: int = 0) -> dict[str, float]:
    from vpp_sim.env import TabletopEnv

    out = {}
    rng = np.random.default_rng(seed)
    for name, cams in (("both_cameras", ("static", "gripper")), ("static_only", ("static",)), ("no_cameras", ())):
        env = TabletopEnv(seed=seed, cameras=cams)
        env.reset()
        actions = [np.r_[rng.uniform(-0.3, 0.3, 6), 1.0] for _ in range(steps)]
        t0 = time.perf_counter()
        for a in actions:
            env.step(a)
        out[name] = steps / (time.perf_counter() - t0)
        env.close()
    return out


def measure_expert(tasks, trials: int) -> dict[str, dict]:
    from tqdm import tqdm

    from vpp_sim.demos import run_expert_episode
    from vpp_sim.env import TabletopEnv

    env = TabletopEnv(seed=0, cameras=())
    results = {}
    for task in tqdm(tasks, desc="expert", unit="task"):
        ok, steps = 0, []
        for i in range(trials):
            ep = run_expert_episode(env, task, np.random.default_rng(1000 + i), record=False)
            ok += int(ep.success)
            if ep.first_success_step is not None:
                steps.append(ep.first_success_step)
        results[task] = {"success": ok, "trials": trials, "mean_steps_to_success": float(np.mean(steps or [0]))}
    env.close()
    return results


def main(argv=None) -> int:
    from vpp_sim.tasks import SIM_TASKS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--tasks", default=None)
    parser.add_argument("--speed-steps", type=int, default=300)
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",") if args.tasks else list(SIM_TASKS)
    report = {"steps_per_s": measure_speed(args.speed_steps)}
    if args.trials > 0:
        report["expert"] = measure_expert(tasks, args.trials)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
