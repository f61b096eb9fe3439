"""Does a policy act on its instruction? Paired instructions from the same start state, against sampling noise.

    python -m policy_evaluation.instruction_probe --action_model_folder R/policy [--video_model_path V]
        [--clip_model_path C] [--pairs move_slider_left:move_slider_right,turn_on_led:turn_off_led] [--starts 3]
        [--device cpu] [--use_ema] [--output probe.json]

For each pair of simulator tasks (a, b) and each of `--starts` start states where task a applies (the single-task
evaluation's starts, `policy_evaluation.single_task.episode_seeds`), the policy predicts one action chunk for the
evaluation sentence of a and one for b with the same noise, and one more for a with other noise. It reports:

* `instruction_effect`: mean absolute difference between the chunks for a and b (same noise);
* `noise_effect`: mean absolute difference between the two chunks for a (other noise);
* the cosine similarity of the two sentences' U-Net text tokens (what the video model sees) and of their goal
  embeddings (what the action head sees).

An instruction effect no larger than the noise effect means the policy barely reads the instruction. This is how
the simulator experiment found that its stand-in tokenizer cut every instruction to 19 characters
(docs/PERFORMANCE.md). Runs in minutes on a CPU; needs pybullet.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policy_evaluation.suites import DEFAULT_ANNOTATIONS, load_instructions

DEFAULT_PAIRS = "move_slider_left:move_slider_right,turn_on_led:turn_off_led,open_drawer:close_drawer"


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """'a:b,c:d' -> [(a, b), (c, d)]."""
    pairs = []
    for item in text.split(","):
        parts = [p.strip() for p in item.split(":")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"--pairs: expected task_a:task_b items separated by commas, got {item!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0))


def _chunk(policy: Any, batch: dict, text: str, noise_seed: int) -> torch.Tensor:
    generator = torch.Generator(policy.device).manual_seed(noise_seed)
    return policy.predict_action_chunk(batch, text, generator=generator)[0].float().cpu()


@torch.no_grad()
def probe_pair(policy: Any, env: Any, task_a: str, task_b: str, sentences: dict[str, str], starts: int,
               seed: int = 0) -> dict[str, Any]:
    """The measurements above for one pair, over `starts` start states of task a."""
    from policy_evaluation.single_task import episode_seeds
    from vpp_sim.demos import sample_start

    text_a, text_b = sentences[task_a], sentences[task_b]
    tvp = policy.tvp_encoder
    per_start = []
    for trial in range(starts):
        rng, _ = episode_seeds(seed, task_a, trial)
        robot_obs, scene_obs = sample_start(env, task_a, rng)
        obs = env.reset(robot_obs=robot_obs, scene_obs=scene_obs)
        batch = {"rgb_obs": {k: v[None] for k, v in obs["rgb_obs"].items()}}
        a0, b0, a1 = (_chunk(policy, batch, text, noise) for text, noise in ((text_a, 0), (text_b, 0), (text_a, 1)))
        per_start.append({"instruction_effect": float((a0 - b0).abs().mean()),
                          "noise_effect": float((a0 - a1).abs().mean())})
    instruction = float(np.mean([s["instruction_effect"] for s in per_start]))
    noise = float(np.mean([s["noise_effect"] for s in per_start]))
    return {
        "tasks": [task_a, task_b],
        "sentences": [text_a, text_b],
        "unet_text_token_cosine": _cosine(tvp.text_tokens([text_a]), tvp.text_tokens([text_b])),
        "goal_embedding_cosine": _cosine(policy.encode_goal([text_a]), policy.encode_goal([text_b])),
        "instruction_effect": instruction,
        "noise_effect": noise,
        "instruction_to_noise": instruction / noise if noise > 0 else float("inf"),
        "per_start": per_start,
    }


def evaluation_sentences(path: Path, tasks: Sequence[str]) -> dict[str, str]:
    """The evaluator's sentence for each task (entry [0] of its list, `suites.load_instructions`)."""
    instructions = load_instructions(path)
    missing = [t for t in tasks if t not in instructions]
    if missing:
        raise KeyError(f"{path}: no sentence for tasks {missing}")
    return {t: instructions[t] for t in tasks}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--action_model_folder", required=True, help="stage-2 checkpoint folder or run folder")
    ap.add_argument("--video_model_path", help="stage-1 video model folder (default: the checkpoint config's)")
    ap.add_argument("--clip_model_path", help="CLIP folder (default: the checkpoint config's)")
    ap.add_argument("--pairs", default=DEFAULT_PAIRS, help="task_a:task_b,... (starts are drawn for task_a)")
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--use_ema", action="store_true")
    ap.add_argument("--sentences", default=str(DEFAULT_ANNOTATIONS), help="evaluation sentences yaml")
    ap.add_argument("--output", help="also write the JSON here")
    args = ap.parse_args(argv)
    from policy_evaluation.policy_factory import CheckpointPolicyFactory, resolve_checkpoint
    from vpp_sim.env import TabletopEnv

    try:  # bad arguments and missing files are reported before any model is loaded
        pairs = parse_pairs(args.pairs)
        sentences = evaluation_sentences(Path(args.sentences), sorted({t for p in pairs for t in p}))
        checkpoint = resolve_checkpoint(args.action_model_folder)  # CheckpointNotFoundError is a FileNotFoundError
    except (ValueError, KeyError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    factory = CheckpointPolicyFactory(str(checkpoint), args.video_model_path, args.clip_model_path,
                                      use_ema=args.use_ema)
    policy = factory(args.device)
    env = TabletopEnv(seed=args.seed)
    try:
        results = [probe_pair(policy, env, a, b, sentences, args.starts, args.seed) for a, b in pairs]
    finally:
        env.close()
    summary = {"checkpoint": factory.name, "use_ema": args.use_ema, "starts": args.starts, "pairs": results}
    text = json.dumps(summary, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
