"""``python -m services.config_docs``: regenerate the settings reference in ``docs/configuration.md``.

The reference is read off the pydantic models in ``shared/settings.py``, so it cannot drift from the code;
``tests/unit/test_configuration_docs.py`` fails when the file is stale.
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic_core import PydanticUndefined

from shared.settings import Settings

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
BEGIN = "<!-- BEGIN GENERATED REFERENCE (python -m services.config_docs) -->"
END = "<!-- END GENERATED REFERENCE -->"


def _type_name(annotation: Any) -> str:
    text = repr(annotation) if not isinstance(annotation, type) else annotation.__name__
    for noise in ("typing.", "shared.settings.", "shared.learners.base.", "pydantic.types."):
        text = text.replace(noise, "")
    return text.replace("NoneType", "None").replace("|", "\\|")


def _default(value: Any) -> str:
    if value is PydanticUndefined:
        return "(required)"
    if isinstance(value, SecretStr):
        return "`**********`"
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, tuple) and value and isinstance(value[0], BaseModel):
        return "see example"
    text = repr(value)
    return f"`{text}`" if len(text) <= 60 else f"`{text[:57]}...`"


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        found = _submodel(argument)
        if found is not None and typing.get_origin(annotation) is not tuple:
            return found
    return None


def _rows(model: type[BaseModel], prefix: str, sections: list[tuple[str, str, list[str]]]) -> None:
    rows: list[str] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        sub = _submodel(field.annotation)
        if sub is not None and typing.get_origin(field.annotation) is not tuple:
            _rows(sub, f"{path}.", sections)
            continue
        default = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
        rows.append(f"| `{path}` | {_type_name(field.annotation)} | {_default(default)} |")
        items = [a for a in typing.get_args(field.annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        if typing.get_origin(field.annotation) is tuple and items:
            _rows(items[0], f"{path}[].", sections)
    title = prefix.rstrip(".") or "(top level)"
    doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
    sections.append((title, doc, rows))


def reference() -> str:
    """The generated markdown: one table per settings section."""
    sections: list[tuple[str, str, list[str]]] = []
    _rows(Settings, "", sections)
    parts: list[str] = [BEGIN]
    for title, doc, rows in sorted(sections, key=lambda s: (s[0] != "(top level)", s[0])):
        if not rows:
            continue
        parts += ["", f"### `{title}`", "", doc, "", "| setting | type | default |", "|---|---|---|", *rows]
    parts += ["", END]
    return "\n".join(parts)


def render(current: str) -> str:
    """``current`` with its generated section replaced (appended when the markers are missing)."""
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        return head + reference() + tail
    return current.rstrip("\n") + "\n\n" + reference() + "\n"


def main() -> int:
    """Rewrite the reference section of docs/configuration.md."""
    DOC.write_text(render(DOC.read_text(encoding="utf-8") if DOC.exists() else ""), encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
