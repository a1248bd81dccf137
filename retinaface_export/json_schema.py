"""The subset of JSON Schema (draft 2020-12) the package's own schemas use, checked without dependencies.

``manifest.schema.json`` is what the manifest reader enforces, not only documentation: the reader validates
every manifest against it with :func:`schema_problem` (``jsonschema`` is a development dependency only).
:data:`KEYWORDS` lists what is understood; a schema using any other keyword is refused (tests check the
shipped schemas), so the schema cannot grow a rule that silently goes unchecked.
"""

from __future__ import annotations

import math
import re
from typing import Any

KEYWORDS = frozenset(
    {
        "$schema", "$id", "$defs", "$ref", "title", "description",
        "type", "const", "enum", "required", "properties", "additionalProperties", "items", "minItems", "maxItems",
        "minimum", "maximum", "exclusiveMaximum", "multipleOf", "pattern", "anyOf", "allOf", "if", "then",
    }
)  # fmt: skip
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
}


def unknown_keywords(schema: Any) -> set[str]:
    """Keywords of ``schema`` (at any depth) that :func:`schema_problem` does not understand."""
    found: set[str] = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key not in KEYWORDS:
                found.add(key)
            if key in ("properties", "$defs"):
                for sub in value.values():
                    found |= unknown_keywords(sub)
            elif key in ("anyOf", "allOf"):
                for sub in value:
                    found |= unknown_keywords(sub)
            elif key in ("items", "additionalProperties", "if", "then"):
                found |= unknown_keywords(value)
    return found


def _where(path: tuple[str | int, ...]) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return text or "the document"


class _Validator:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root

    def resolve(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#/"):
            raise ValueError(f"unsupported $ref {ref!r}")
        node: Any = self.root
        for part in ref[2:].split("/"):
            node = node[part]
        return node

    def problem(self, value: Any, schema: Any, path: tuple[str | int, ...]) -> str | None:
        if schema is True or schema == {}:
            return None
        if schema is False:
            return f"{_where(path)}: not allowed"
        if "$ref" in schema:
            found = self.problem(value, self.resolve(schema["$ref"]), path)
            if found:
                return found
        where = _where(path)
        if "type" in schema:
            kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            if not any(_TYPES[kind](value) for kind in kinds):
                return f"{where}: must be {' or '.join(kinds)}, got {type(value).__name__}"
        if "const" in schema and (value != schema["const"] or type(value) is not type(schema["const"])):
            return f"{where}: must be {schema['const']!r}"
        if "enum" in schema and not any(value == e and type(value) is type(e) for e in schema["enum"]):
            return f"{where}: must be one of {', '.join(map(str, schema['enum']))}, got {str(value)[:40]!r}"
        if isinstance(value, dict):
            for key in schema.get("required", ()):
                if key not in value:
                    return f"{where}: {key!r} is missing"
            properties = schema.get("properties", {})
            for key, item in value.items():
                if key in properties:
                    found = self.problem(item, properties[key], (*path, key))
                elif "additionalProperties" in schema:
                    if schema["additionalProperties"] is False:
                        return f"{where}: {str(key)[:40]!r} is not a field of it"
                    found = self.problem(item, schema["additionalProperties"], (*path, key))
                else:
                    found = None
                if found:
                    return found
        if isinstance(value, list):
            if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", math.inf):
                return f"{where}: {len(value)} items"
            if "items" in schema:
                for index, item in enumerate(value):
                    found = self.problem(item, schema["items"], (*path, index))
                    if found:
                        return found
        if _TYPES["number"](value):
            if "minimum" in schema and value < schema["minimum"]:
                return f"{where}: below {schema['minimum']}"
            if "maximum" in schema and value > schema["maximum"]:
                return f"{where}: above {schema['maximum']}"
            if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
                return f"{where}: must be below {schema['exclusiveMaximum']}"
            if "multipleOf" in schema and value % schema["multipleOf"]:
                return f"{where}: not a multiple of {schema['multipleOf']}"
        if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
            return f"{where}: {value[:40]!r} does not match {schema['pattern']}"
        if "anyOf" in schema and all(self.problem(value, sub, path) for sub in schema["anyOf"]):
            return f"{where}: matches none of the allowed forms ({self.problem(value, schema['anyOf'][0], path)})"
        for sub in schema.get("allOf", ()):
            found = self.problem(value, sub, path)
            if found:
                return found
        if "if" in schema and self.problem(value, schema["if"], path) is None and "then" in schema:
            return self.problem(value, schema["then"], path)
        return None


def schema_problem(document: Any, schema: dict[str, Any]) -> str | None:
    """The first place where ``document`` breaks ``schema`` (``artifacts[0].batch: above 4096``), or None.

    Raises:
        ValueError: ``schema`` uses a keyword outside :data:`KEYWORDS`.
    """
    unknown = unknown_keywords(schema)
    if unknown:
        raise ValueError(f"schema keywords not supported here: {', '.join(sorted(unknown))}")
    return _Validator(schema).problem(document, schema, ())
