"""Reading a job's YAML: a strict loader (YAML 1.2 numbers, a node budget against "billion laughs"), the
line of every field, and YAML or validation errors turned into a ``JobError`` naming line and field."""

from __future__ import annotations

import re
from typing import Annotated, Any, Callable, Mapping, Optional, Sequence, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)

from .errors import JobError, JobIssue

Clock = Callable[[], float]
MAX_JOB_CHARS = 1024 * 1024  # a job template or rendered job bigger than this is refused
MAX_YAML_NODES = 100_000  # nodes visited (aliases included): refuses "billion laughs" documents
_stage = ["render"]  # what the parse worker is doing ("render" or "parse"), for its "took too long" message
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"


class _JobLoader(yaml.SafeLoader):  # type: ignore[misc]  # yaml has no stubs: SafeLoader is Any
    """SafeLoader without YAML 1.1 base-60 numbers: ``52:54:00:11:22:33`` stays a string (a MAC).

    It counts the nodes it composes (aliases included) and stops at ``MAX_YAML_NODES``: a 1 MiB flow
    list of 300,000 items is refused after a third of it, not composed whole first."""

    _composed = 0

    def compose_node(self, parent: Optional[yaml.Node], index: Any) -> Optional[yaml.Node]:
        self._composed += 1
        if self._composed > MAX_YAML_NODES:
            mark = self.peek_event().start_mark
            raise JobError(f"the job has more than {MAX_YAML_NODES} YAML nodes", line=mark.line + 1)
        return super().compose_node(parent, index)


_JobLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_JobLoader.add_implicit_resolver(
    _INT,
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_JobLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)

Path_ = tuple[Union[str, int], ...]


def _field_name(path: Sequence[Union[str, int]]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "job"


def _yaml_error(exc: yaml.YAMLError, text: str) -> JobError:
    line = None
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            line = mark.line + 1
        problem = exc.problem or exc.context or "syntax error"
        if exc.context and exc.problem:
            where = exc.context_mark
            if where is not None and mark is not None and where.line != mark.line:
                problem = f"{exc.problem} ({exc.context} started on line {where.line + 1})"
            else:
                problem = f"{exc.problem} ({exc.context})"
    elif isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        problem = f"unacceptable character {chr(exc.character)!r}" if isinstance(exc.character, int) else str(exc)
    else:
        problem = str(exc)
    return JobError(f"invalid YAML: {problem}", line=line)


def _walk(node: yaml.Node, path: Path_, lines: dict[Path_, int], budget: list[int]) -> None:
    budget[0] += 1
    if budget[0] > MAX_YAML_NODES:
        raise JobError("the job has too many YAML nodes (aliases?)", line=node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else f"<{key_node.id}>"
            line = key_node.start_mark.line + 1
            sub = path + (key,)
            if key != "<<" and key in seen:
                raise JobError(f"duplicate key {key!r} (first on line {seen[key]})", line=line, field=_field_name(sub))
            seen[key] = line
            lines.setdefault(sub, line)
            _walk(value_node, sub, lines, budget)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            sub = path + (index,)
            lines.setdefault(sub, item.start_mark.line + 1)
            _walk(item, sub, lines, budget)


def _load_yaml(text: str) -> tuple[Any, dict[Path_, int]]:
    """Parse one YAML document; returns the data and the line (1-based) of every key/item path."""
    _stage[0] = "parse"
    try:
        loader = _JobLoader(text)  # reads the start of the stream: may raise ReaderError already
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, text) from None
    try:
        try:
            node = loader.get_single_node()
            if node is None:
                raise JobError("the job is empty", line=1)
            lines: dict[Path_, int] = {(): node.start_mark.line + 1}
            _walk(node, (), lines, [0])
            data = loader.construct_document(node)
        except yaml.YAMLError as exc:
            raise _yaml_error(exc, text) from None
        except RecursionError:
            raise JobError("the job's YAML is nested too deeply", line=1) from None
    finally:
        loader.dispose()
    return data, lines


def _line_for(path: Sequence[Union[str, int]], lines: Mapping[Path_, int]) -> Optional[int]:
    parts = tuple(path)
    while True:
        if parts in lines:
            return lines[parts]
        if not parts:
            return None
        parts = parts[:-1]


def _issue_message(err: Mapping[str, Any]) -> str:
    kind = err.get("type")
    if kind == "missing":
        return "field required"
    if kind == "extra_forbidden":
        return "unknown field (not in the version 1 job schema)"
    if kind in ("value_error", "assertion_error"):
        ctx = err.get("ctx") or {}
        if "error" in ctx:
            return str(ctx["error"])
    return str(err.get("msg", "invalid value"))


def _from_validation(exc: ValidationError, lines: Mapping[Path_, int], prefix: Path_ = ()) -> JobError:
    issues = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(err["loc"])
        issues.append(JobIssue(_line_for(loc, lines), _field_name(loc), _issue_message(err)))
    issues.sort(key=lambda issue: issue.line or 0)
    return JobError(issues=issues)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


_Amount = Annotated[float, Field(ge=0, allow_inf_nan=False)]
