"""Narrative safety: a ``Narrative.div`` must be one well-formed ``<div>`` of the XHTML subset FHIR allows."""

from __future__ import annotations

import re
from typing import Final
from xml.parsers import expat

from shared.core.fhir_validation.syntax import DANGEROUS_SCHEMES, SCHEME

__all__ = ["narrative_problems"]

_XHTML_NS = "http://www.w3.org/1999/xhtml"
_XML_NS = "http://www.w3.org/XML/1998/namespace"
# The elements the FHIR validator allows in narrative (basic HTML formatting, tables, lists, links, images).
_NARRATIVE_ELEMENTS: Final = frozenset(
    """
    a abbr acronym address b bdo big blockquote br caption cite code col colgroup dd dfn div dl dt em h1 h2 h3 h4 h5
    h6 hr i img kbd li ol p pre q samp small span strong sub sup table tbody td tfoot th thead tr tt ul var map area
    """.split()  # noqa: SIM905 - a word list reads better than 145 quoted strings
)
_NARRATIVE_ATTRIBUTES: Final = frozenset(
    """
    title style class id lang dir accesskey tabindex href name src alt width height border align valign char charoff
    abbr axis headers scope rowspan colspan span summary cellspacing cellpadding rules frame start type value shape
    coords usemap nohref hreflang rel rev cite datetime nowrap
    """.split()  # noqa: SIM905 - a word list reads better than 145 quoted strings
)
_URL_ATTRIBUTES: Final = frozenset({"href", "src", "cite", "usemap"})
_SAFE_IMAGE_DATA = re.compile(r"data:image/(?:png|gif|jpeg|webp);base64,", re.IGNORECASE)
_STYLE_HAZARDS = ("expression(", "javascript:", "vbscript:", "url(", "behavior:", "-moz-binding", "@import", "\\")


def narrative_problems(div: str) -> list[tuple[str, str]]:
    """Why a narrative ``div`` is refused, as ``(issue code, message)`` pairs; empty when it is safe XHTML.

    It must be one well-formed ``<div xmlns="http://www.w3.org/1999/xhtml">`` holding only the basic formatting
    elements and attributes FHIR allows (no script, style, iframe, object, embed, form, event handlers, or
    ``javascript:``/``data:`` URLs), with some content (txt-1, txt-2). No DTDs or entities are ever expanded.
    """
    lowered = div.lower()
    if "<!doctype" in lowered or "<!entity" in lowered or "<?" in div:
        return [("security", "Narrative cannot contain DOCTYPE, ENTITY declarations or processing instructions")]
    if not lowered.lstrip().startswith("<div"):
        return [("structure", _DIV_SHAPE)]
    checker = _NarrativeChecker()
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.StartElementHandler = checker.start
    parser.CharacterDataHandler = checker.text
    parser.StartDoctypeDeclHandler = _refuse_declaration
    parser.EntityDeclHandler = _refuse_declaration
    parser.ExternalEntityRefHandler = _refuse_declaration
    try:
        parser.Parse(div, True)
    except expat.ExpatError as error:
        if error.code == expat.errors.codes[expat.errors.XML_ERROR_UNDEFINED_ENTITY]:
            return [("structure", "Narrative uses an HTML entity; only &lt; &gt; &amp; &quot; &apos; and &#...; exist")]
        return [("structure", "Narrative is not well-formed XHTML")]
    except ValueError:
        return [("security", "Narrative cannot contain DOCTYPE or ENTITY declarations")]
    if checker.root is False:
        return [("structure", _DIV_SHAPE)]
    if not checker.has_content and not checker.problems:
        checker.problems.append(("value", "Narrative must have some non-whitespace content"))
    return checker.problems[:10]


_DIV_SHAPE = 'Narrative must be a <div xmlns="http://www.w3.org/1999/xhtml"> element'


def _refuse_declaration(*_: object) -> int:
    raise ValueError("declarations are not allowed in narrative")


class _NarrativeChecker:
    __slots__ = ("has_content", "problems", "root")

    def __init__(self) -> None:
        self.root: bool | None = None  # None before the first element, then whether it was an XHTML div
        self.has_content = False
        self.problems: list[tuple[str, str]] = []

    def start(self, tag: str, attributes: dict[str, str]) -> None:
        namespace, _, local = tag.rpartition(" ")
        if self.root is None:
            self.root = namespace == _XHTML_NS and local == "div"
        if namespace != _XHTML_NS or local not in _NARRATIVE_ELEMENTS:
            self.problems.append(("security", f"Element <{local[:32]}> is not allowed in narrative"))
            return
        if local == "img":
            self.has_content = True
        for name, value in attributes.items():
            attr_namespace, _, attr_local = name.rpartition(" ")
            attr = attr_local.lower()
            if attr_namespace:
                if attr_namespace != _XML_NS or attr not in ("lang", "space"):
                    self.problems.append(("security", f"Attribute '{attr_local[:32]}' is not allowed in narrative"))
            elif attr.startswith("on"):
                self.problems.append(("security", f"Event handler attribute '{attr[:32]}' is not allowed in narrative"))
            elif attr not in _NARRATIVE_ATTRIBUTES:
                self.problems.append(("security", f"Attribute '{attr[:32]}' is not allowed in narrative"))
            elif attr in _URL_ATTRIBUTES:
                compact = "".join(c for c in value if c.isprintable() and not c.isspace())
                scheme = SCHEME.match(compact)
                if (
                    scheme is not None
                    and scheme.group(1).lower() in DANGEROUS_SCHEMES
                    and not (local == "img" and attr == "src" and _SAFE_IMAGE_DATA.match(compact))
                ):
                    self.problems.append(("security", f"The URL scheme '{scheme.group(1).lower()}:' is not allowed"))
            elif attr == "style":
                style = "".join(value.lower().split())
                if any(hazard in style for hazard in _STYLE_HAZARDS):
                    self.problems.append(("security", "The style attribute uses a construct that is not allowed"))

    def text(self, data: str) -> None:
        if not self.has_content and not data.isspace():
            self.has_content = True
