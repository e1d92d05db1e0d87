"""`clsgen card` (rewrite a model folder's README.md, optionally with an evaluation's metrics) and
`clsgen push` (upload a model folder to the Hugging Face Hub)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("card", help="rewrite a model folder's README.md model card",
                       description="Rewrite MODEL_DIR/README.md from its clsgen.json: task, threshold, "
                       "temperature, metrics and a snippet that loads it with plain transformers + PEFT. "
                       "With --metrics, first store that evaluation's metrics in clsgen.json.")
    c.add_argument("model", metavar="MODEL_DIR", help="a model folder saved by clsgen")
    c.add_argument("--metrics", metavar="FILE", help="a metrics.json written by `clsgen evaluate` on this "
                   "model: its metrics and intervals go into the card's model-index")
    c.set_defaults(func=run_card)

    p = sub.add_parser("push", help="upload a model folder to the Hugging Face Hub",
                       description="Create the hub repository REPO_ID if needed and upload MODEL_DIR (adapter, "
                       "head, tokenizer, clsgen.json and a refreshed README.md; checkpoints and logs stay "
                       "behind). Needs network and a token (`hf auth login`, HF_TOKEN or --token-env).")
    p.add_argument("model", metavar="MODEL_DIR", help="a model folder saved by clsgen")
    p.add_argument("repo_id", metavar="REPO_ID", help="user-or-org/name on the hub")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--metrics", metavar="FILE", help="store this `clsgen evaluate` metrics.json in the card first")
    p.add_argument("--token-env", metavar="VAR", help="environment variable holding the hub token (default: "
                   "huggingface_hub's own lookup)")
    p.add_argument("--message", metavar="TEXT", help="commit message")
    p.set_defaults(func=run_push)


def run_card(args: argparse.Namespace) -> int:
    from ..card import record_evaluation, write_model_card
    from ..model_io import read_meta

    read_meta(args.model)
    path = record_evaluation(args.model, args.metrics) if args.metrics else write_model_card(args.model)
    print(f"model card written to {path}")
    return 0


def run_push(args: argparse.Namespace) -> int:
    from ..card import record_evaluation
    from ..hub import push_to_hub, token_from_env
    from ..model_io import read_meta

    read_meta(args.model)
    token = token_from_env(args.token_env)
    if args.metrics:
        record_evaluation(args.model, args.metrics)
    url = push_to_hub(args.model, args.repo_id, private=args.private, token=token, commit_message=args.message)
    print(f"pushed {args.model} to {args.repo_id}{' (private)' if args.private else ''}: {url}")
    return 0
