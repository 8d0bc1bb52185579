"""The built-in web page: a fixed set of files answered by URL path (pure, no I/O).

The server serves the page at ``/`` (``index.html``) and every other file of
the package directory ``nexus_actors/web`` at ``/static/<name>``. The set of
files is read once, at start-up, by :meth:`StaticSite.from_package`; after
that a request is a dictionary lookup (:meth:`StaticSite.reply`), so no path a
client sends can reach any other file: there is no file-system path to
traverse, only the names that were found. Files are served with their content
type, ``Cache-Control: no-cache`` (they are not fingerprinted: the browser
asks again every time, so an upgraded server never mixes old and new files),
``X-Content-Type-Options: nosniff`` and, for HTML, a Content-Security-Policy
that allows nothing but this origin (the page loads nothing from elsewhere).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources
from typing import Final

import attrs

from .http import HttpReply

INDEX: Final = "index.html"
"Served at ``/``."
STATIC_PREFIX: Final = "/static/"
"Every file, ``index.html`` included, is served at ``/static/<name>``."

CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".woff2": "font/woff2",
}
"The only kinds of file served; anything else in the directory is ignored."

NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)+")
"A servable file name: no leading dot, no path separator, no ``..``, an extension."

CACHE_CONTROL: Final = "no-cache"

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'")
"""HTML may load scripts, styles, images and fonts from this origin only, and open
WebSockets only to it (``'self'`` covers ``ws:``/``wss:`` on the same host and port)."""


@attrs.frozen(kw_only=True)
class StaticFile:
    """One servable file."""

    name: str
    content_type: str
    body: bytes

    def reply(self) -> HttpReply:
        headers = {"Cache-Control": CACHE_CONTROL, "X-Content-Type-Options": "nosniff"}
        if self.content_type.startswith("text/html"):
            headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
            headers["Referrer-Policy"] = "no-referrer"
        return HttpReply(status=200, body=self.body, headers=headers,
                         content_type=self.content_type)


def content_type_of(name: str) -> str | None:
    """The content type ``name`` is served with, or ``None`` if it is not served."""
    if NAME.fullmatch(name) is None:
        return None
    return CONTENT_TYPES.get("." + name.rsplit(".", 1)[1].lower())


@attrs.frozen
class StaticSite:
    """URL path → file: ``/`` and ``/static/<name>`` for each file found."""

    routes: Mapping[str, StaticFile]

    @classmethod
    def from_files(cls, files: Mapping[str, bytes]) -> StaticSite:
        """The site for ``files`` (file name → content); names that are not servable (hidden,
        with a path, of an unknown kind) are left out."""
        routes: dict[str, StaticFile] = {}
        for name, body in sorted(files.items()):
            content_type = content_type_of(name)
            if content_type is None:
                continue
            served = StaticFile(name=name, content_type=content_type, body=bytes(body))
            routes[STATIC_PREFIX + name] = served
            if name == INDEX:
                routes["/"] = served
        return cls(routes)

    @classmethod
    def from_package(cls, package: str = "nexus_actors", directory: str = "web") -> StaticSite:
        """The files of ``<package>/<directory>`` (read now, once; empty if it is missing)."""
        root = resources.files(package).joinpath(directory)
        if not root.is_dir():
            return cls({})
        return cls.from_files({entry.name: entry.read_bytes() for entry in root.iterdir()
                               if entry.is_file() and content_type_of(entry.name) is not None})

    def reply(self, path: str) -> HttpReply | None:
        """The answer to ``GET path`` (the path without its query), or ``None`` when no
        file is served there."""
        served = self.routes.get(path)
        return served.reply() if served is not None else None
