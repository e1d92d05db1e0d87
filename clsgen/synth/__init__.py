"""Data construction: teacher models write label-conditioned explanations (`clsgen synth`).

    from clsgen.synth import synthesize, LocalTeacher, read_synth
    report = synthesize(examples, task, LocalTeacher("smollm2-135m"), "runs/x/synth.jsonl")
    print(report.format())

See `build.py` (accept/retry/append-only output), `teachers.py` (local HF model, OpenAI-compatible
server, reference field) and `prompts.py` (the label-conditioned prompt).
"""

from .build import Acceptance, SynthReport, SynthStore, judge, read_synth, synthesize
from .prompts import DEFAULT_INSTRUCTION, TeacherPrompt
from .teachers import (LocalTeacher, OpenAITeacher, ReferenceTeacher, Reply, Request, Teacher,
                       make_teacher)

__all__ = [
    "Acceptance", "DEFAULT_INSTRUCTION", "LocalTeacher", "OpenAITeacher", "ReferenceTeacher", "Reply",
    "Request", "SynthReport", "SynthStore", "Teacher", "TeacherPrompt", "judge", "make_teacher",
    "read_synth", "synthesize",
]
