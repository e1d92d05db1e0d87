"""Data construction: teacher models write label-conditioned explanations (`clsgen synth`).

    from clsgen.synth import synthesize, LocalTeacher, read_synth
    report = synthesize(examples, task, LocalTeacher("smollm2-135m"), "runs/x/synth.jsonl")
    print(report.format())

See `build.py` (accept/retry), `store.py` (the append-only output), `teacher.py` (the interface),
`teachers.py` (local HF model, reference field), `openai_teacher.py` (an OpenAI-compatible server) and
`prompts.py` (the label-conditioned prompt).
"""

from .build import Acceptance, SynthReport, judge, synthesize
from .openai_teacher import OpenAITeacher
from .prompts import DEFAULT_INSTRUCTION, TeacherPrompt
from .store import SynthStore, read_synth
from .teacher import Reply, Request, Teacher
from .teachers import LocalTeacher, ReferenceTeacher, make_teacher

__all__ = [
    "Acceptance", "DEFAULT_INSTRUCTION", "LocalTeacher", "OpenAITeacher", "ReferenceTeacher", "Reply",
    "Request", "SynthReport", "SynthStore", "Teacher", "TeacherPrompt", "judge", "make_teacher",
    "read_synth", "synthesize",
]
