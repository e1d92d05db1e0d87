"""One-pass inference: probability + explanation from one prefill, against generating the explanation
alone with HF `generate`, and against the two-pass approach (a head forward, then `generate` from
scratch), at several prompt lengths.

    python benchmarks/inference.py [--quick]

The model is the embedded SmolLM2-135M-Instruct in bf16 (clsgen's default dtype on a CPU) with a
freshly initialised LoRA + head (speed does not depend on trained weights). Prompts are real
CliniFact claims with test-set abstracts concatenated and trimmed so that the rendered prompt has
exactly the stated number of tokens. Decoding is greedy with no end-of-turn stop on any side, so
every side generates exactly the same number of tokens; the benchmark checks that the tokens are the
same ones. Every side starts from the example's text fields and ends with the decoded text.
"""

from __future__ import annotations

import copy

import _path  # noqa: F401  (first: this checkout's clsgen on sys.path)

# isort: split

from common import Section, Target, data_dir, interleaved, table  # noqa: E402

NEW_TOKENS = 32


def _prompts(task, tokenizer, examples, lengths):
    """{length: fields} whose rendered prompt is exactly `length` tokens: one claim, and test
    abstracts concatenated, then trimmed token by token."""
    claim = examples[0].fields["claim"]
    text = "\n\n".join(ex.fields["article_abstract"] for ex in examples)
    abstract_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    fixed = len(task.encode_prompt(tokenizer, {"claim": claim, "article_abstract": ""}).input_ids)
    out = {}
    for length in lengths:
        keep = length - fixed
        for _ in range(20):  # re-tokenising the cut text can merge or split a token or two
            fields = {"claim": claim, "article_abstract": tokenizer.decode(abstract_ids[:keep]).strip()}
            n = len(task.encode_prompt(tokenizer, fields).input_ids)
            if n == length:
                break
            keep += length - n
        if n != length:
            raise RuntimeError(f"could not build a prompt of exactly {length} tokens (got {n})")
        out[length] = fields
    return out


def run(quick: bool = False) -> Section:
    import torch

    from clsgen.backbones import load_model
    from clsgen.config import DataConfig
    from clsgen.datasets import load_dataset
    from clsgen.inference import Predictor
    from clsgen.model import DualHeadModel

    lengths = (256, 512) if quick else (512, 1024, 2048)
    repeats = 3
    new_tokens = 16 if quick else NEW_TOKENS
    ds = load_dataset(DataConfig(dataset="clinifact", data_dir=data_dir()))
    task = ds.task.with_overrides(max_prompt_tokens=max(lengths) + 64)  # no truncation in the timed code
    backbone = load_model("smollm2-135m", dtype="bfloat16")
    model = DualHeadModel.from_backbone(backbone, task).eval()
    tok = model.tokenizer
    prompts = _prompts(task, tok, ds.test, lengths)

    # No stop token on any side: every side decodes exactly `new_tokens` tokens.
    predictor = Predictor(model, batch_size=1, max_new_tokens=new_tokens, stop_token_ids=[])
    gen_config = copy.deepcopy(model.causal_lm.generation_config)
    gen_config.eos_token_id = None
    gen_config.update(do_sample=False, temperature=None, top_p=None, top_k=None,
                      max_new_tokens=new_tokens, min_new_tokens=None, pad_token_id=tok.pad_token_id)

    def encode(fields):
        ids = torch.tensor([task.encode_prompt(tok, fields).input_ids])
        return ids, torch.ones_like(ids)

    def generate(ids, mask):
        with torch.inference_mode():
            out = model.lm.generate(input_ids=ids, attention_mask=mask, generation_config=gen_config)
        return out[0, ids.shape[1]:].tolist()

    def one_pass(fields):
        p = predictor.predict([fields])[0]
        return p.probability, p.token_ids, p.text

    def generate_alone(fields):
        ids, mask = encode(fields)
        new = generate(ids, mask)
        return None, new, tok.decode(new, skip_special_tokens=True).strip()

    def two_pass(fields):
        ids, mask = encode(fields)
        with torch.inference_mode():
            logit = float(model(ids, mask, lm_positions="none").cls_logits[0])
        new = generate(ids, mask)
        return float(torch.sigmoid(torch.tensor(logit))), new, tok.decode(new, skip_special_tokens=True).strip()

    rows, figures, same_tokens = [], {"lengths": {}}, True
    for length, fields in prompts.items():
        # one run of each side checks that they agree; it is also the warm-up of the timing below
        a, b, c = one_pass(fields), generate_alone(fields), two_pass(fields)
        same = a[1] == b[1] == c[1] and len(a[1]) == new_tokens and abs(a[0] - c[0]) < 1e-6
        same_tokens &= same
        t = interleaved({name: (lambda fn=fn, fields=fields: fn(fields)) for name, fn in
                         (("one_pass", one_pass), ("generate", generate_alone), ("two_pass", two_pass))},
                        repeats=repeats, warmup=0)
        figures["lengths"][length] = {**t, "same_tokens": same}
        rows.append([length, t["one_pass"], t["generate"], t["two_pass"], t["one_pass"] / t["generate"],
                     t["two_pass"] / t["one_pass"], "yes" if same else "NO"])
        print(f"  {length} tokens: {t}", flush=True)

    ratio = max(f["one_pass"] / f["generate"] for f in figures["lengths"].values())
    figures.update(new_tokens=new_tokens, repeats=repeats, dtype="bfloat16", same_tokens=same_tokens)
    markdown = "\n".join([
        f"SmolLM2-135M-Instruct (bf16) + fresh LoRA + head, batch size 1, greedy, exactly {new_tokens} new "
        "tokens on every side (no end-of-turn stop). Prompts: a real CliniFact claim with test abstracts "
        "concatenated and trimmed to the stated length. Each side goes from text fields to decoded text:",
        "",
        "- **one-pass**: `Predictor.predict` — one prefill gives the head's probability and the KV cache, "
        "the explanation is decoded from that cache;",
        "- **generate alone**: the explanation only, `generate` of the same PEFT model on the same prompt "
        "(no probability);",
        "- **two-pass**: a head forward pass for the probability, then `generate` from scratch.",
        "",
        f"Seconds per input, medians of {repeats} interleaved runs, after one run of each side that checks "
        "that the sides produce the same tokens (and warms up).",
        "",
        table(["prompt tokens", "one-pass s", "generate alone s", "two-pass s", "one-pass / generate alone",
               "speed-up over two-pass", "same tokens on all sides"], rows),
        "",
        "The target is checked on the worst (largest) one-pass / generate-alone ratio over the lengths: "
        "one-pass gives the probability on top of the explanation at (almost) no extra cost, while the "
        "two-pass approach pays the prefill twice.",
    ])
    return Section("One-pass inference", markdown, figures,
                   [Target("one-pass / generate alone (worst length)", ratio, "<= 1.05")])


if __name__ == "__main__":
    from common import main

    main(run)
