"""Spec files: documents read from YAML or JSON with the line of every field, and their validation.

Validation errors name the file, the document (position, kind and name) and
the field, with the line the field is on: the YAML composer keeps every
node's position, so each field path (in the spelling `stacks.spec` uses for
errors: `spec.ssh_users[0].public_key`) is mapped to the line of its key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from orchestrator.client.errors import ClientError, ExitCode
from stacks.spec import InstanceDoc, SnapshotDoc, SpecError, parse_document

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
STDIN = "-"


class SpecFileError(ClientError):
    """Problems with spec files, one line each."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems), ExitCode.INVALID)


@dataclass
class SourceDocument:
    """One document of a spec file, as written, with where its fields are."""

    source: str  # the file as the user named it, or <stdin>
    index: int  # 1-based position among the file's documents
    data: Any
    start_line: int | None = None  # None when the file gave no positions
    field_lines: dict[str, int] = field(default_factory=dict)

    @property
    def kind(self) -> str | None:
        kind = self.data.get("kind") if isinstance(self.data, dict) else None
        return kind if kind in ("Instance", "Snapshot") else None

    @property
    def name(self) -> str | None:
        name = self.data.get("name") if isinstance(self.data, dict) else None
        return name if isinstance(name, str) else None

    def label(self) -> str:
        """`document 2 (instance train-1)`, with as much as the document says about itself."""
        about = " ".join(part for part in ((self.kind or "").lower(), self.name or "") if part)
        return f"document {self.index} ({about})" if about else f"document {self.index}"

    def line_of(self, field_path: str) -> int | None:
        """The line of the field, or of its nearest enclosing field that is written (a missing field's parent)."""
        path = field_path
        while path:
            if path in self.field_lines:
                return self.field_lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return self.start_line

    def problem(self, field_path: str, message: str) -> str:
        line = self.line_of(field_path)
        where = f"{self.source}: {self.label()}" + (f", line {line}" if line is not None else "")
        return f"{where}: {field_path}: {message}"


@dataclass(frozen=True)
class ParsedDocument:
    source: SourceDocument
    doc: InstanceDoc | SnapshotDoc

    @property
    def ref(self) -> str:
        """kubectl's `kind/name`: `instance/train-1`."""
        return f"{self.doc.kind.lower()}/{self.doc.name}"


def _field_lines(node: Node, path: str, lines: dict[str, int]) -> None:
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                continue
            child = f"{path}.{key_node.value}" if path else str(key_node.value)
            lines.setdefault(child, key_node.start_mark.line + 1)
            _field_lines(value_node, child, lines)
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            child = f"{path}[{index}]"
            lines[child] = item.start_mark.line + 1
            _field_lines(item, child, lines)


def _yaml_documents(text: str, source: str) -> list[SourceDocument]:
    documents: list[SourceDocument] = []
    loader = yaml.SafeLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            data = loader.construct_document(node)
            if data is None:  # an empty document: a stray `---`
                documents.append(SourceDocument(source, len(documents) + 1, None))
                continue
            lines: dict[str, int] = {}
            _field_lines(node, "", lines)
            documents.append(SourceDocument(source, len(documents) + 1, data, node.start_mark.line + 1, lines))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f", line {mark.line + 1}" if mark else ""
        reason = error.problem or error.context or "not valid YAML"
        raise SpecFileError([f"{source}{where}: not valid YAML: {reason}"]) from None
    except yaml.YAMLError as error:
        raise SpecFileError([f"{source}: not valid YAML: {error}"]) from None
    finally:
        loader.dispose()
    return [document for document in documents if document.data is not None]


def _json_documents(text: str, source: str) -> list[SourceDocument]:
    """One document, or a JSON array of them; lines come from reading the JSON as YAML, when that works."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SpecFileError([f"{source}, line {error.lineno}: not valid JSON: {error.msg}"]) from None
    items = data if isinstance(data, list) else [data]
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:  # JSON that YAML 1.1 does not read (tabs, some escapes): no positions
        root = None
    nodes = root.value if isinstance(root, SequenceNode) and isinstance(data, list) else [root]
    documents = []
    for index, (item, node) in enumerate(zip(items, nodes, strict=True), start=1):
        lines: dict[str, int] = {}
        if node is not None:
            _field_lines(node, "", lines)
        start = node.start_mark.line + 1 if node is not None else None
        documents.append(SourceDocument(source, index, item, start, lines))
    return documents


def parse_text(text: str, source: str) -> list[SourceDocument]:
    """The documents of one file's text (JSON when `source` ends in .json, else YAML, `---`-separated)."""
    if source.endswith(".json"):
        return _json_documents(text, source)
    return _yaml_documents(text, source)


def _spec_files(path: Path) -> list[Path]:
    return sorted(child for child in path.iterdir() if child.is_file() and child.suffix in SPEC_SUFFIXES)


def load(paths: Iterable[str], stdin: TextIO) -> list[SourceDocument]:
    """Every document of every `-f` argument, in order: a file, a directory (its spec files, sorted), or `-`."""
    documents: list[SourceDocument] = []
    problems: list[str] = []
    for argument in paths:
        if argument == STDIN:
            sources = [("<stdin>", stdin.read)]
        else:
            path = Path(argument)
            if path.is_dir():
                files = _spec_files(path)
                if not files:
                    problems.append(
                        f"{argument}: no {', '.join('*' + s for s in SPEC_SUFFIXES)} files in this directory"
                    )
                sources = [(str(file), file.read_text) for file in files]
            else:
                sources = [(argument, path.read_text)]
        for source, read in sources:
            try:
                found = parse_text(read(), source)
            except FileNotFoundError:
                problems.append(f"{source}: no such file or directory")
                continue
            except (OSError, UnicodeDecodeError) as error:
                problems.append(f"{source}: cannot read: {getattr(error, 'strerror', None) or error}")
                continue
            except SpecFileError as error:
                problems.extend(error.problems)
                continue
            if not found:
                problems.append(f"{source}: no documents")
            documents.extend(found)
    if problems:
        raise SpecFileError(problems)
    return documents


def validate(
    documents: Iterable[SourceDocument], *, enabled_clouds: Iterable[str] | None = None
) -> list[ParsedDocument]:
    """Every document validated (all problems reported together), or SpecFileError; names must be unique per kind."""
    parsed: list[ParsedDocument] = []
    problems: list[str] = []
    defined: dict[tuple[str, str], SourceDocument] = {}
    for document in documents:
        try:
            doc = parse_document(document.data, enabled_clouds=enabled_clouds)
        except SpecError as error:
            problems.extend(document.problem(e.field, e.message) for e in error.errors)
            continue
        first = defined.setdefault((doc.kind, doc.name), document)
        if first is not document:
            problems.append(
                document.problem(
                    "name", f"{doc.kind.lower()} {doc.name} is already defined by {first.source}: {first.label()}"
                )
            )
            continue
        parsed.append(ParsedDocument(document, doc))
    if problems:
        raise SpecFileError(problems)
    return parsed
