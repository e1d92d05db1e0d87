"""`clsgen generate`: a chat reply from a base model (smoke test of a model and its chat template)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="chat with a base model (smoke test)")
    p.add_argument("prompt", help="the user message")
    p.add_argument("--model", default="smollm2-135m", help="model spec (default: the embedded model)")
    p.add_argument("--system", default=None, help="optional system message")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.set_defaults(func=run)


def generate_reply(backbone, prompt: str, system: str | None = None, max_new_tokens: int = 96) -> str:
    import torch

    tok = backbone.tokenizer
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = backbone.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def run(args: argparse.Namespace) -> int:
    from ..backbones import load_model
    from ..errors import ClsgenError

    if not args.prompt.strip():
        raise ClsgenError("the prompt is empty; pass the text to answer")
    backbone = load_model(args.model)
    print(generate_reply(backbone, args.prompt, args.system, args.max_new_tokens))
    return 0
