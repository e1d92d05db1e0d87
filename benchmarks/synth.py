"""Teacher throughput: the local teacher's batched generation against one request at a time.

    python benchmarks/synth.py [--quick]

`clsgen.synth.teachers.LocalTeacher` (the embedded SmolLM2-135M-Instruct, bf16) writes the first,
greedy attempt for the same CliniFact training examples either as one batch (`generate(requests)`,
left padded) or one request per call (batch size 1). The teacher's generation API is timed directly
(same prompts, same max_new_tokens, attempts=1), so that acceptance and retries of `clsgen synth` do
not enter the figures.
"""

from __future__ import annotations

import _path  # noqa: F401  (first: this checkout's clsgen on sys.path)

# isort: split

from common import Section, data_dir, interleaved, table  # noqa: E402

MAX_NEW_TOKENS = 48


def run(quick: bool = False) -> Section:
    from clsgen.backbones import load_model
    from clsgen.config import DataConfig
    from clsgen.datasets import load_dataset
    from clsgen.synth import LocalTeacher, Request
    from clsgen.synth.prompts import TeacherPrompt

    n = 4 if quick else 8
    repeats = 1 if quick else 2
    ds = load_dataset(DataConfig(dataset="clinifact", data_dir=data_dir(), max_train=n))
    examples = ds.train[:n]
    backbone = load_model("smollm2-135m", dtype="bfloat16")
    teacher = LocalTeacher(backbone=backbone, max_new_tokens=MAX_NEW_TOKENS, batch_size=n)
    prompt = TeacherPrompt.for_task(ds.task)
    requests = [Request(ex, 0, prompt) for ex in examples]  # attempt 0: greedy
    prompt_tokens = [len(teacher.prompt_ids(r)) for r in requests]

    outputs: dict[str, list] = {}

    def batched():
        outputs["batched"] = teacher.generate(requests)

    def one_at_a_time():
        outputs["one at a time"] = [reply for r in requests for reply in teacher.generate([r])]

    t = interleaved({"batched": batched, "one at a time": one_at_a_time}, repeats=repeats, warmup=0)
    print(f"  {t}", flush=True)
    tokens = {k: sum(r.tokens for r in v) for k, v in outputs.items()}
    same = sum(a.text == b.text for a, b in zip(outputs["batched"], outputs["one at a time"]))
    finish = {k: sorted({r.finish for r in v}) for k, v in outputs.items()}
    speedup = t["one at a time"] / t["batched"]
    rows = [[k, n / s, tokens[k] / s, s, tokens[k]] for k, s in t.items()]
    figures = {"examples": n, "max_new_tokens": MAX_NEW_TOKENS, "repeats": repeats, "seconds": t,
               "examples_per_s": {k: n / s for k, s in t.items()},
               "tokens_per_s": {k: tokens[k] / s for k, s in t.items()}, "generated_tokens": tokens,
               "prompt_tokens": prompt_tokens, "same_text": same, "finish": finish, "speedup": speedup}
    markdown = "\n".join([
        f"{n} CliniFact training examples, the local teacher (SmolLM2-135M-Instruct, bf16, the default "
        f"teacher prompt with its demonstrations: {min(prompt_tokens)}–{max(prompt_tokens)} prompt tokens), "
        f"greedy first attempt, max_new_tokens {MAX_NEW_TOKENS}, stopping at the end of turn as `clsgen "
        f"synth` does. **batched**: one `generate` call for all {n} (left padded); **one at a time**: "
        f"{n} calls of batch size 1. Medians of {repeats} interleaved run(s); generated tokens are those "
        "the replies kept (up to and including the end-of-turn token).",
        "",
        table(["teacher", "examples/s", "generated tokens/s", "seconds", "generated tokens"], rows),
        "",
        f"Batched speed-up: **{speedup:.2f}x**. Replies with the same text both ways: {same} of {n} "
        "(left padding in bf16 may flip a near-tie in greedy decoding).",
    ])
    return Section("Teacher throughput", markdown, figures)


if __name__ == "__main__":
    from common import main

    main(run)
