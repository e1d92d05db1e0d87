"""Scoring throughput: `Predictor.predict_proba` (probabilities only, no generation) against a bare
forward pass of the underlying model over the same token ids, with the same batches.

    python benchmarks/scoring.py [--quick]

The model is the embedded SmolLM2-135M-Instruct in bf16 with a fresh LoRA + head; the inputs are
real CliniFact test examples (claim + abstract, the task's default prompt limit of 768 tokens).
"""

from __future__ import annotations

import _path  # noqa: F401  (first: this checkout's clsgen on sys.path)

# isort: split

from common import Section, Target, data_dir, interleaved, table  # noqa: E402

BATCH_SIZE = 8


def run(quick: bool = False) -> Section:
    import torch

    from clsgen.backbones import load_model
    from clsgen.config import DataConfig
    from clsgen.datasets import load_dataset
    from clsgen.inference import Predictor
    from clsgen.model import DualHeadModel

    n = 4 if quick else 32
    repeats = 2
    ds = load_dataset(DataConfig(dataset="clinifact", data_dir=data_dir(), max_eval=n))
    examples = ds.test[:n]
    backbone = load_model("smollm2-135m", dtype="bfloat16")
    model = DualHeadModel.from_backbone(backbone, ds.task).eval()
    predictor = Predictor(model, batch_size=BATCH_SIZE)

    # The bare sides get the very batches predict_proba forms: the same token ids, sorted by length,
    # left padded; their tokenisation is done beforehand (outside the timing).
    prompts = [predictor.encode(ex) for ex in examples]
    groups = [[int(i) for i in idx] for idx in predictor._batches(prompts, "")]
    tokens = sum(len(p.input_ids) for p in prompts)
    lm = model.causal_lm  # the *ForCausalLM with the LoRA layers injected

    def positions(mask):
        return (mask.cumsum(-1) - 1).clamp(min=0)

    def sides_for(idx):
        """The three sides on one batch; predict_proba gets exactly this batch's examples (it sorts
        them and pads them to the same tensors the bare sides get)."""
        batch = [examples[i] for i in idx]
        ids, mask = predictor._pad_left([prompts[i] for i in idx])
        pos = positions(mask)

        def hidden_only():  # the decoder's final hidden states; no LM head, no classification head
            with torch.inference_mode():
                lm.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)

        def logits_all():  # the causal LM's plain forward: logits at every position
            with torch.inference_mode():
                lm(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)

        return ids.numel(), {"predict_proba": lambda: predictor.predict_proba(batch),
                             "hidden states only": hidden_only, "logits, every position": logits_all}

    # Interleaved batch by batch (the three sides on batch 1, again, ..., then batch 2): machine noise
    # comes and goes within seconds, so the finer the turns the more evenly it falls on every side.
    # A side's time is the sum over batches of its median per batch.
    t: dict[str, float] = {}
    padded = 0
    for k, idx in enumerate(groups):
        width, fns = sides_for(idx)
        padded += width
        for name, seconds in interleaved(fns, repeats=repeats, warmup=1 if k == 0 else 0).items():
            t[name] = t.get(name, 0.0) + seconds
    print(f"  {t}", flush=True)

    rows = [[name, len(examples) / s, tokens / s, s, s / t["predict_proba"]]
            for name, s in t.items()]
    ratio = t["hidden states only"] / t["predict_proba"]
    figures = {"examples": len(examples), "prompt_tokens": tokens, "padded_tokens": padded,
               "batch_size": BATCH_SIZE, "repeats": repeats, "seconds": t,
               "examples_per_s": {k: len(examples) / s for k, s in t.items()},
               "tokens_per_s": {k: tokens / s for k, s in t.items()}}
    markdown = "\n".join([
        f"{len(examples)} real CliniFact test examples ({tokens} prompt tokens, {tokens / len(examples):.0f} "
        f"on average; {padded} with padding), SmolLM2-135M-Instruct (bf16) + fresh LoRA + head, batch size "
        f"{BATCH_SIZE}. Every side runs the same batches: the examples sorted by prompt length (as "
        "`predict_proba` batches them), left padded, positions from the attention mask; `predict_proba` "
        "is called once per batch with that batch's examples.",
        "",
        "- **predict_proba**: `Predictor.predict_proba(examples)` from the examples' text: chat template "
        "and tokenisation included, one prefill per batch, the head at the last prompt token, no LM head;",
        "- **hidden states only**: the bare decoder `causal_lm.model(ids, mask)` over the pre-tokenised "
        "ids (the same transformer work as predict_proba, without tokenisation and head): the strict "
        "comparison, and the one the target uses;",
        "- **logits, every position**: the causal LM's plain forward `causal_lm(ids, mask)`, which also "
        "projects every position onto the 49k-token vocabulary.",
        "",
        f"The sides take turns batch by batch; a side's time is the sum over batches of its median of "
        f"{repeats} runs (after one warm-up run). tokens/s counts prompt tokens (not padding).",
        "",
        table(["side", "examples/s", "tokens/s", "seconds", "time / predict_proba"], rows),
    ])
    return Section("Scoring throughput", markdown, figures,
                   [Target("predict_proba / bare forward (hidden states only) throughput", ratio, ">= 0.9")])


if __name__ == "__main__":
    from common import main

    main(run)
