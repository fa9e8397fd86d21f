"""``csr-ros train-head``: train a learned action head from a recording (safetensors out).

The shipped ``config/heads/example_head.safetensors`` was made with::

    csr-ros train-head --record-synthetic out/head_demo.jsonl \\
        --out config/heads/example_head.safetensors

that is: write the synthetic recording of :mod:`csr_ros.core.runtime.head_data` (48 episodes x 10
observations, seed 0), stream every episode into a fresh cached state of the embedded model
(the default system prompt, as the engine has at run time with ``control.policy: learned_head``),
take the hidden state of the newest token after each append, and fit the MLP head to the
recorded actions' chunks (10 of the 48 episodes held out for the reported validation accuracy). ``--data FILE`` trains
from an existing recording instead (same JSON-lines format, e.g. from teleoperation logs).
"""

from __future__ import annotations

import argparse
import json


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="recording (JSON lines) to train from")
    p.add_argument("--record-synthetic", default=None, metavar="FILE",
                   help="first write the synthetic recording to FILE, then train from it")
    p.add_argument("--episodes", type=int, default=48, help="synthetic recording: episodes")
    p.add_argument("--steps", type=int, default=10, help="synthetic recording: observations per episode")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--model", default="embedded", help="'embedded' or a local HF model folder")
    p.add_argument("--shape", default=None, help="random weights of a named shape instead (tests)")
    p.add_argument("--actions-file", default="", help="action registry (default: the shipped one)")
    p.add_argument("--horizon-steps", type=int, default=10)
    p.add_argument("--dt-s", type=float, default=0.1)
    p.add_argument("--system-prompt", default="", help="system prompt of the engine at run time (model.system_prompt)")
    p.add_argument("--hidden-dim", type=int, default=32)
    p.add_argument("--epochs", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from csr_ros.core.runtime.actions import ActionRegistry, resolve_config_file
    from csr_ros.core.model.backends.hf import load_hf, load_shape
    from csr_ros.core.runtime.head_data import synthetic_recording
    from csr_ros.core.runtime.head_training import train_head

    if (args.data is None) == (args.record_synthetic is None):
        raise SystemExit("give exactly one of --data FILE or --record-synthetic FILE")
    registry = ActionRegistry.load(resolve_config_file(args.actions_file, "actions.yaml"), args.horizon_steps, args.dt_s)
    data = args.data or synthetic_recording(args.record_synthetic, args.episodes, args.steps, args.seed)
    backend = load_shape(args.shape, device="cpu") if args.shape else load_hf(args.model, device="cpu")
    metrics = train_head(data, args.out, backend, registry, args.hidden_dim, args.epochs, seed=args.seed,
                         system_prompt=args.system_prompt)
    print(json.dumps(metrics, indent=2))
    print(f"wrote {args.out}")
    return 0
