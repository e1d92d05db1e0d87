"""Publishing a saved model folder to the Hugging Face Hub (`clsgen push`).

What is uploaded is the model itself: adapter (or merged weights), head, tokenizer, clsgen.json and
the README.md model card, refreshed first. A training folder's checkpoints, logs and temporary files
stay behind. The token comes from the usual place (`hf auth login`, HF_TOKEN) or from the
environment variable the caller names; it is never written anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .card import write_model_card
from .errors import ClsgenError

IGNORE = ["checkpoints/*", "checkpoints/**", ".*", "**/.*", "*.tmp", "train_log.jsonl", "*.lock"]
"""Files of a model folder that are not the model (training state, logs, temporaries)."""


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str | None = None, api: Any = None) -> str:
    """Create `repo_id` on the hub if needed (private when asked) and upload `folder`; returns the
    commit's URL. `api`: an object with `create_repo` and `upload_folder` like `huggingface_hub.HfApi`
    (tests pass a local fake; default: a real `HfApi`)."""
    from .model_io import read_meta

    folder = Path(folder)
    read_meta(folder)  # a clear error unless it is a clsgen model folder
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ClsgenError(f"repository id {repo_id!r} is not of the form 'user-or-org/name'")
    write_model_card(folder)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model", token=token)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", token=token,
                                 commit_message=commit_message or f"Upload {folder.name} with clsgen",
                                 ignore_patterns=IGNORE)
    except ClsgenError:
        raise
    except Exception as e:  # network, authentication, permissions: the hub's own words, one line
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ClsgenError(f"could not push {folder} to {repo_id}: {why}; check the network and the token "
                          "(`hf auth login`, HF_TOKEN or --token-env)") from None
    return str(getattr(info, "commit_url", None) or info)


def token_from_env(name: str | None) -> str | None:
    """The token held by environment variable `name` (None: huggingface_hub's own lookup)."""
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise ClsgenError(f"--token-env {name}: that environment variable is not set or empty")
    return value
