"""Backward compatibility of Avro schemas: can a new reader read what an old writer wrote?

Follows the resolution rules of the Avro specification (records by field name or alias, fields
added only with defaults, numeric promotion, unions branch by branch, enums by symbol).
"""

from __future__ import annotations

from typing import Any

PROMOTIONS = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
}
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def backward_incompatibilities(writer: Any, reader: Any) -> list[str]:
    """Why data written with `writer` cannot be read with `reader`; empty when it can."""
    problems: list[str] = []
    _check(writer, reader, _names(writer), _names(reader), "", problems, set())
    return problems


def _names(schema: Any, namespace: str = "", found: dict[str, Any] | None = None) -> dict:
    found = {} if found is None else found
    if isinstance(schema, list):
        for branch in schema:
            _names(branch, namespace, found)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            full = _full_name(schema, namespace)
            found[full] = schema
            namespace = full.rpartition(".")[0]
            for field in schema.get("fields", []):
                _names(field["type"], namespace, found)
        elif kind == "array":
            _names(schema["items"], namespace, found)
        elif kind == "map":
            _names(schema["values"], namespace, found)
        elif isinstance(kind, dict | list):
            _names(kind, namespace, found)
    return found


def _full_name(schema: dict, namespace: str) -> str:
    name = schema["name"]
    if "." in name:
        return name
    space = schema.get("namespace", namespace)
    return f"{space}.{name}" if space else name


def _resolve(schema: Any, names: dict[str, Any]) -> Any:
    """A named reference becomes its definition; `{"type": X}` wrappers become X."""
    if isinstance(schema, str) and schema not in PRIMITIVES:
        for full, definition in names.items():
            if schema in (full, full.rpartition(".")[2]):
                return definition
    if isinstance(schema, dict):
        inner = schema["type"]
        if isinstance(inner, list | dict) or inner in PRIMITIVES:
            return _resolve(inner, names)
    return schema


def _kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        return "record" if schema["type"] == "error" else schema["type"]
    return schema


def _short(schema: Any) -> str:
    return schema.get("name", schema["type"]) if isinstance(schema, dict) else str(schema)


def _check(
    writer: Any,
    reader: Any,
    writer_names: dict,
    reader_names: dict,
    path: str,
    problems: list[str],
    seen: set[tuple[int, int]],
) -> None:
    writer = _resolve(writer, writer_names)
    reader = _resolve(reader, reader_names)
    pair = (id(writer), id(reader))
    if pair in seen:
        return
    seen.add(pair)
    where = path or "<root>"
    writer_kind, reader_kind = _kind(writer), _kind(reader)

    if writer_kind == "union":
        for branch in writer:
            _check(branch, reader, writer_names, reader_names, path, problems, seen)
        return
    if reader_kind == "union":
        candidates = [b for b in reader if _matches(writer, _resolve(b, reader_names))]
        if not candidates:
            problems.append(
                f"{where}: a written {_short(writer)} has no matching branch in the reader's union"
            )
            return
        _check(writer, candidates[0], writer_names, reader_names, path, problems, seen)
        return
    if writer_kind in PRIMITIVES:
        if reader_kind not in PROMOTIONS.get(writer_kind, {writer_kind}):
            problems.append(f"{where}: written as {writer_kind}, read as {reader_kind}")
        return
    if writer_kind != reader_kind:
        problems.append(f"{where}: written as {writer_kind}, read as {reader_kind}")
        return
    if writer_kind == "array":
        _check(
            writer["items"],
            reader["items"],
            writer_names,
            reader_names,
            f"{path}[]",
            problems,
            seen,
        )
    elif writer_kind == "map":
        _check(
            writer["values"],
            reader["values"],
            writer_names,
            reader_names,
            f"{path}{{}}",
            problems,
            seen,
        )
    elif writer_kind == "enum":
        missing = set(writer["symbols"]) - set(reader["symbols"])
        if missing and "default" not in reader:
            problems.append(
                f"{where}: enum symbols {sorted(missing)} were removed without a default"
            )
    elif writer_kind == "fixed":
        if writer["size"] != reader["size"]:
            problems.append(
                f"{where}: fixed size changed from {writer['size']} to {reader['size']}"
            )
    elif writer_kind == "record":
        written = {field["name"]: field for field in writer["fields"]}
        for field in reader["fields"]:
            field_path = f"{path}.{field['name']}" if path else field["name"]
            source = written.get(field["name"]) or next(
                (written[a] for a in field.get("aliases", []) if a in written), None
            )
            if source is None:
                if "default" not in field:
                    problems.append(f"{field_path}: added without a default")
                continue
            _check(
                source["type"],
                field["type"],
                writer_names,
                reader_names,
                field_path,
                problems,
                seen,
            )


def _matches(writer: Any, reader: Any) -> bool:
    writer_kind, reader_kind = _kind(writer), _kind(reader)
    if writer_kind in PRIMITIVES:
        return reader_kind in PROMOTIONS.get(writer_kind, {writer_kind})
    if writer_kind != reader_kind:
        return False
    if writer_kind in ("record", "enum", "fixed"):
        return writer["name"].rpartition(".")[2] == reader["name"].rpartition(".")[2]
    return True
