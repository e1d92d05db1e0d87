"""Reading a config's YAML: YAML 1.2 booleans (so verbalizers like [NO, YES] stay words), a key
given twice refused, and every way a file can fail to be YAML told as a `ConfigError`."""

from __future__ import annotations

import re
from typing import Any

import yaml

from .errors import ConfigError, Problem


class _Loader(yaml.SafeLoader):
    """YAML with 1.2 booleans: only true/false are booleans, so verbalizers like [NO, YES] stay words."""


_Loader.yaml_implicit_resolvers = {
    k: [r for r in v if r[0] != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _unique_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """A mapping whose keys are all different: YAML parsers keep the last of a repeated key silently."""
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, str) and key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, f"the key {key!r} is given twice (the last would "
                "win silently); give each key once", key_node.start_mark)
        if isinstance(key, str):
            seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_yaml(text: str) -> Any:
    """The YAML document in `text`, read with the rules above; raises what PyYAML raises."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def parse_yaml_file(text: str, source: str) -> Any:
    """The YAML document in `text` ({} when empty); a `ConfigError` saying where it is not YAML."""
    try:
        data = load_yaml(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = e.problem or e.context or "syntax error"
        raise ConfigError([Problem(f"not valid YAML{where}: {what}", file=source)]) from None
    except yaml.YAMLError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError([Problem(f"not valid YAML: {first}", file=source)]) from None
    except RecursionError:
        raise ConfigError([Problem("not valid YAML: nested too deeply", file=source)]) from None
    except ValueError:  # an integer with more digits than Python converts
        raise ConfigError([Problem("not valid YAML: a number with too many digits", file=source)]) from None
    return {} if data is None else data
