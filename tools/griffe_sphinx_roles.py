"""A Griffe extension for the API reference: the Sphinx conventions of the docstrings.

The docstrings cross-reference with Sphinx roles
(``:func:`~labdct_live.segmentation.spots.spot_table```),
which Markdown would show verbatim. This extension (loaded by mkdocstrings, see mkdocs.yml)
rewrites each role into an optional autoref: a link when the target is rendered in the API
reference, plain code otherwise (a private helper, numpy, torch...), never a build warning.
Targets resolve as Sphinx does: absolute, else relative to the enclosing class, module, package.
Constants documented by ``#:`` comments (above the assignment, or after it on the same line)
get those comments as their docstring, which Griffe would otherwise not see.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(
    r":(?:py:)?(?:mod|func|class|meth|attr|data|obj|exc|const):`"
    r"(?:(?P<title>[^`<]*?)\s*<(?P<explicit>[^`>]+)>|(?P<target>[^`]+))`"
)


class SphinxRoles(griffe.Extension):
    """Read ``#:`` comments, rewrite ``:role:`target``` in every docstring of the package."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        self._collection = loader.modules_collection
        self._walk(pkg)

    def _walk(self, obj: griffe.Object) -> None:
        if obj.is_attribute and obj.docstring is None:
            _doc_comment(obj)
        if obj.docstring is not None and ":`" in obj.docstring.value:
            obj.docstring.value = _ROLE.sub(lambda m: self._replace(m, obj), obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member)

    def _resolve(self, target: str, obj: griffe.Object) -> str | None:
        scopes = [obj] if obj.is_class or obj.is_module else []
        parent = obj.parent
        while parent is not None:
            scopes.append(parent)
            parent = parent.parent
        for candidate in [target, *(f"{scope.path}.{target}" for scope in scopes)]:
            try:
                found = self._collection[candidate]
            except Exception:  # noqa: BLE001 - a missing member or an unresolvable alias
                continue
            try:
                return found.final_target.path if found.is_alias else found.path
            except Exception:  # noqa: BLE001 - an alias to outside the package
                return found.path
        return None

    def _replace(self, match: re.Match, obj: griffe.Object) -> str:
        target = (match["explicit"] or match["target"]).strip()
        title = match["title"]
        if title is None:
            title = target[1:].rsplit(".", 1)[-1] if target.startswith("~") else target
        target = target.lstrip("~")
        code = f"<code>{html.escape(title)}</code>"
        path = self._resolve(target, obj)
        if path is None:
            return code
        return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'


def _doc_comment(attribute: griffe.Attribute) -> None:
    """Set the ``#:`` comment of ``attribute`` (if it has one) as its docstring."""
    if attribute.lineno is None or attribute.filepath is None:
        return
    try:
        lines = attribute.lines_collection[attribute.filepath]
    except KeyError:
        return
    index = attribute.lineno - 1  # 0-based line of the assignment
    _, sep, trailing = lines[index].partition("#:")
    if sep:
        text = [trailing.strip()]
    else:
        text = []
        while index > 0 and lines[index - 1].strip().startswith("#:"):
            index -= 1
            text.insert(0, lines[index].strip()[2:].removeprefix(" "))
    if text:
        attribute.docstring = griffe.Docstring(
            "\n".join(text), lineno=index + 1, parent=attribute
        )
