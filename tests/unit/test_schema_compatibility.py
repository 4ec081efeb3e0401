"""Every schema stays backward compatible with each version committed before it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from streams.bus.compat import backward_incompatibilities
from streams.settings import PROJECT_ROOT

SCHEMAS = sorted((PROJECT_ROOT / "schemas").glob("*.avsc"))


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=PROJECT_ROOT, check=True, capture_output=True, text=True
    ).stdout


def committed_versions(path: Path) -> list[tuple[str, dict]]:
    """(commit, schema) for every committed version of a schema file, newest first."""
    relative = path.relative_to(PROJECT_ROOT).as_posix()
    versions = []
    for commit in _git("log", "--format=%H", "--", relative).split():
        try:
            text = _git("show", f"{commit}:{relative}")
        except subprocess.CalledProcessError:
            continue
        versions.append((commit[:10], json.loads(text)))
    return versions


@pytest.mark.skipif(shutil.which("git") is None, reason="git is needed to read schema history")
@pytest.mark.parametrize("path", SCHEMAS, ids=[p.stem for p in SCHEMAS])
def test_current_schema_reads_every_committed_version(path: Path) -> None:
    current = json.loads(path.read_text())
    archived = [
        (archived_path.name, json.loads(archived_path.read_text()))
        for archived_path in (PROJECT_ROOT / "schemas" / "history").glob(f"**/{path.stem}*.avsc")
    ]
    for version, older in committed_versions(path) + archived:
        problems = backward_incompatibilities(older, current)
        assert not problems, f"{path.name} cannot read data written with {version}: {problems}"


def record(*fields: dict, name: str = "R") -> dict:
    return {"type": "record", "name": name, "namespace": "t", "fields": list(fields)}


@pytest.mark.parametrize(
    ("writer", "reader"),
    [
        (record({"name": "a", "type": "int"}), record({"name": "a", "type": "long"})),
        (
            record({"name": "a", "type": "int"}),
            record({"name": "a", "type": "int"}, {"name": "b", "type": "string", "default": ""}),
        ),
        (
            record({"name": "a", "type": "int"}, {"name": "gone", "type": "string"}),
            record({"name": "a", "type": "int"}),
        ),
        (
            record({"name": "a", "type": "string"}),
            record({"name": "a", "type": ["null", "string"], "default": None}),
        ),
        (
            record({"name": "old", "type": "int"}),
            record({"name": "new", "type": "int", "aliases": ["old"]}),
        ),
        (
            record({"name": "m", "type": {"type": "map", "values": "int"}}),
            record({"name": "m", "type": {"type": "map", "values": "double"}}),
        ),
        (
            record({"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A"]}}),
            record({"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}}),
        ),
    ],
)
def test_compatible_changes_pass(writer: dict, reader: dict) -> None:
    assert backward_incompatibilities(writer, reader) == []


@pytest.mark.parametrize(
    ("writer", "reader", "problem"),
    [
        (
            record({"name": "a", "type": "int"}),
            record({"name": "a", "type": "int"}, {"name": "b", "type": "string"}),
            "b: added without a default",
        ),
        (
            record({"name": "a", "type": "long"}),
            record({"name": "a", "type": "int"}),
            "a: written as long, read as int",
        ),
        (
            record({"name": "a", "type": ["null", "string"], "default": None}),
            record({"name": "a", "type": "string"}),
            "a: written as null, read as string",
        ),
        (
            record({"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}}),
            record({"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A"]}}),
            "removed without a default",
        ),
        (
            record({"name": "xs", "type": {"type": "array", "items": "string"}}),
            record({"name": "xs", "type": {"type": "array", "items": "int"}}),
            "xs[]: written as string, read as int",
        ),
    ],
)
def test_incompatible_changes_are_named(writer: dict, reader: dict, problem: str) -> None:
    problems = backward_incompatibilities(writer, reader)
    assert any(problem in text for text in problems), problems


def test_recursive_schemas_terminate() -> None:
    tree = json.loads((PROJECT_ROOT / "schemas" / "message_tree.avsc").read_text())
    assert backward_incompatibilities(tree, tree) == []
