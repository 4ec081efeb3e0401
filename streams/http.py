"""What every HTTP view shares: the JSON error shape and the OpenAPI document of the worker."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OPENAPI_VERSION = "3.1.0"


def error_body(field: str | None, message: str) -> dict[str, Any]:
    """The JSON body of a 4xx answer: what is wrong and which field or parameter it is."""
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return body


class OpenAPIDocument:
    """The worker's OpenAPI document, assembled from what each domain's api.py declares."""

    def __init__(self, title: str, version: str) -> None:
        self.title = title
        self.version = version
        self.paths: dict[str, dict[str, Any]] = {}
        self.tags: dict[str, str] = {}

    def add(self, path: str, operations: Mapping[str, Any], tag: str | None = None) -> None:
        """Declare operations (`{"get": {...}}`, OpenAPI operation objects) for a path."""
        item = self.paths.setdefault(path, {})
        for method, operation in operations.items():
            if method in item:
                raise ValueError(f"{method.upper()} {path} is documented twice")
            operation = dict(operation)
            if tag is not None:
                operation.setdefault("tags", [tag])
            item[method] = operation

    def describe_tag(self, tag: str, description: str) -> None:
        self.tags[tag] = description

    def as_dict(self) -> dict[str, Any]:
        return {
            "openapi": OPENAPI_VERSION,
            "info": {"title": self.title, "version": self.version},
            "tags": [{"name": n, "description": d} for n, d in sorted(self.tags.items())],
            "paths": dict(sorted(self.paths.items())),
            "components": {
                "schemas": {
                    "Error": {
                        "type": "object",
                        "required": ["error"],
                        "properties": {
                            "error": {"type": "string", "description": "what is wrong"},
                            "field": {"type": "string", "description": "the offending input"},
                        },
                    }
                }
            },
        }


def query_parameter(
    name: str, description: str, *, required: bool = False, schema: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """An OpenAPI query parameter object."""
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": dict(schema or {"type": "string"}),
    }


def json_response(description: str, schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    content: dict[str, Any] = {"schema": dict(schema)} if schema else {}
    return {"description": description, "content": {"application/json": content}}


BAD_REQUEST = {
    "description": "bad input; the body names the field",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
