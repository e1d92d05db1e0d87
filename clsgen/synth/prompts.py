"""Label-conditioned teacher prompts: the teacher sees the example *and its gold label* and explains why.

A teacher conversation is

* a system message: the instruction (`DEFAULT_INSTRUCTION`, or `teacher.prompt`), which may use the
  placeholders ``{task}`` (the task's own system instruction) and ``{verbalizers}`` (e.g. ``FALSE or
  TRUE``);
* optionally, worked demonstrations of the task (built in for clinifact and pubmedqa; `teacher.demos`),
  each a user turn and the assistant turn a teacher should write, the one with the example's own
  label last (small teachers copy the style of the latest one);
* the user turn: the example's input rendered with the task template, then `REQUEST`, which names the
  correct answer and asks for the verdict line ``Answer: <verbalizer>`` at the end.

Putting the gold verdict wording in the request is how the method conditions the teacher on the label;
nothing is appended to or forced into what the teacher writes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ClsgenError
from ..task import Task
from ..verdict import verdict_line

DEFAULT_INSTRUCTION = (
    "{task}\n\n"
    "For each example you are told the correct answer. Explain in two to four sentences that a "
    "clinician can check why that answer is correct, using facts stated in the input. Then write the "
    "verdict line 'Answer: <correct answer>' ({verbalizers}) as the last line, with nothing after it."
)
"""The teacher's system message; `teacher.prompt` replaces it (same placeholders)."""

REQUEST = "Correct answer: {answer}\nExplain why the correct answer is {answer}, then end with the line '{line}'."
"""Appended to the example's input in the user turn."""

PLACEHOLDERS = ("task", "verbalizers")


@dataclass(frozen=True)
class Demo:
    """A worked example shown to the teacher before the real one."""

    fields: Mapping[str, str]
    label: int
    explanation: str


# Invented, short, one per label: they teach the format (explanation, blank line, verdict line).
BUILTIN_DEMOS: dict[str, tuple[Demo, ...]] = {
    "clinifact": (
        Demo({"claim": "Drug A is superior to placebo in terms of systolic blood pressure at 12 weeks.",
              "article_abstract": "In 200 adults with hypertension, drug A lowered systolic blood pressure "
                                  "by 12 mmHg against 3 mmHg with placebo at 12 weeks (p<0.001)."},
             1, "The abstract reports a 12 mmHg fall with drug A against 3 mmHg with placebo at 12 weeks, "
                "a statistically significant difference. This is the effect the claim describes, so the "
                "abstract supports it."),
        Demo({"claim": "Exercise training is superior to usual care in terms of walking distance at 6 months.",
              "article_abstract": "150 patients with heart failure were randomised to exercise training or "
                                  "usual care. After 6 months, walking distance did not differ between "
                                  "the groups (p=0.41)."},
             0, "The trial found no difference in walking distance between exercise training and usual "
                "care (p=0.41). The abstract therefore gives no evidence for the claimed benefit."),
    ),
    "pubmedqa": (
        Demo({"question": "Does a nurse-led telephone follow-up reduce readmissions after heart surgery?",
              "context": "METHODS: 400 patients were randomised to weekly nurse calls or usual care for 30 "
                         "days after discharge.\nRESULTS: Readmission at 30 days was 8% with calls and 15% "
                         "with usual care (p=0.02)."},
             1, "Readmissions at 30 days fell from 15% with usual care to 8% with nurse calls, and the "
                "difference was statistically significant. The study's answer to the question is yes."),
        Demo({"question": "Is serum ferritin associated with survival in sepsis?",
              "context": "METHODS: Ferritin was measured on admission in 250 patients with sepsis.\n"
                         "RESULTS: 28-day survival did not differ across ferritin quartiles (p=0.63)."},
             0, "Survival at 28 days was similar in every ferritin quartile (p=0.63), so the study found "
                "no association. The study's answer to the question is no."),
    ),
}


@dataclass(frozen=True)
class TeacherPrompt:
    """How a task's examples are put to a teacher (see the module docstring)."""

    task: Task
    instruction: str = DEFAULT_INSTRUCTION
    demos: tuple[Demo, ...] = ()

    @classmethod
    def for_task(cls, task: Task, instruction: str | None = None, demos: bool = True) -> TeacherPrompt:
        """The default (or `instruction`) prompt, with the task's built-in demos when `demos`."""
        chosen = BUILTIN_DEMOS.get(task.name, ()) if demos else ()
        chosen = tuple(d for d in chosen if set(task.fields) <= set(d.fields))
        prompt = cls(task, instruction if instruction is not None else DEFAULT_INSTRUCTION, chosen)
        prompt.system()  # fail fast on a bad template
        return prompt

    def system(self) -> str:
        verbalizers = " or ".join(self.task.verbalizers)
        try:
            return self.instruction.format(task=self.task.system, verbalizers=verbalizers).strip()
        except (KeyError, IndexError, ValueError) as e:
            raise ClsgenError(f"teacher.prompt {self.instruction[:80]!r}... is not a valid template ({e}); "
                              f"it may use {{task}} and {{verbalizers}}; write literal braces as {{{{ }}}}"
                              ) from None

    def user(self, fields: Mapping[str, Any], label: int) -> str:
        answer = self.task.verbalizers[label]
        return (f"{self.task.user_message(fields)}\n\n"
                f"{REQUEST.format(answer=answer, line=verdict_line(answer))}")

    def messages(self, fields: Mapping[str, Any], label: int) -> list[dict[str, str]]:
        """The chat messages for one example with its gold label."""
        msgs = [{"role": "system", "content": self.system()}]
        for d in sorted(self.demos, key=lambda d: d.label == label):  # the same label's demo last
            msgs.append({"role": "user", "content": self.user(d.fields, d.label)})
            msgs.append({"role": "assistant", "content": self.task.target_text(d.explanation, d.label)})
        msgs.append({"role": "user", "content": self.user(fields, label)})
        return msgs

    def describe(self) -> dict[str, Any]:
        """Everything that shapes the prompt, for the teacher settings hash."""
        return {"system": self.system(), "request": REQUEST, "template": self.task.template,
                "verbalizers": list(self.task.verbalizers),
                "demos": [[dict(d.fields), d.label, d.explanation] for d in self.demos],
                "demo_order": "same label last"}


def settings_hash(settings: Mapping[str, Any]) -> str:
    """A short stable hash of teacher settings (sorted JSON, sha256, 16 hex digits)."""
    blob = json.dumps(settings, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
