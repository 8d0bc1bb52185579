"""The built-in page's files: which are served, where, with which headers (pure lookups).

A site is a fixed map from URL path to file, made from the names found in the
package directory; no request path is ever joined to a file-system path, so
traversal, hidden files and unknown kinds of file never answer.
"""

from __future__ import annotations

import pytest

from nexus_actors.protocol.static import (
    CACHE_CONTROL,
    INDEX,
    StaticSite,
    content_type_of,
)

FILES = {
    "index.html": b"<!doctype html><title>t</title>",
    "app.js": b"export {};",
    "style.css": b"body{}",
    "favicon.svg": b"<svg/>",
    ".hidden.js": b"secret",
    "notes": b"no extension",
    "server.py": b"import os",
    "README.md": b"# readme",
}


@pytest.fixture
def site() -> StaticSite:
    return StaticSite.from_files(FILES)


def test_the_index_is_served_at_the_root_and_every_file_under_static(site: StaticSite) -> None:
    assert sorted(site.routes) == ["/", "/static/app.js", "/static/favicon.svg",
                                   "/static/index.html", "/static/style.css"]
    root = site.reply("/")
    assert root is not None
    assert root.status == 200
    assert root.body == FILES[INDEX]
    assert root.content_type == "text/html; charset=utf-8"


@pytest.mark.parametrize(("path", "content_type"), [
    ("/static/app.js", "text/javascript; charset=utf-8"),
    ("/static/style.css", "text/css; charset=utf-8"),
    ("/static/favicon.svg", "image/svg+xml"),
    ("/static/index.html", "text/html; charset=utf-8"),
])
def test_each_file_has_its_content_type_and_is_revalidated_every_time(
        site: StaticSite, path: str, content_type: str) -> None:
    reply = site.reply(path)
    assert reply is not None
    assert reply.content_type == content_type
    assert reply.body == FILES[path.removeprefix("/static/")]
    assert reply.headers["Cache-Control"] == CACHE_CONTROL == "no-cache"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"


def test_html_may_load_and_connect_to_its_own_origin_only(site: StaticSite) -> None:
    page = site.reply("/")
    script = site.reply("/static/app.js")
    assert page is not None
    assert script is not None
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self'" in policy
    assert "connect-src 'self'" in policy
    assert "http" not in policy  # no other origin is named
    assert "Content-Security-Policy" not in script.headers


@pytest.mark.parametrize("path", [
    "/static/.hidden.js", "/static/notes", "/static/server.py", "/static/README.md",
    "/static/../pyproject.toml", "/static/%2e%2e/pyproject.toml", "/static//etc/passwd",
    "/static/", "/static", "/index.html", "/app.js", "/static/APP.JS", "/static/app.js/",
    "/static/sub/app.js", "/../static/app.js", "", "/%2F",
])
def test_anything_else_is_not_served(site: StaticSite, path: str) -> None:
    assert site.reply(path) is None


@pytest.mark.parametrize(("name", "expected"), [
    ("app.js", "text/javascript; charset=utf-8"),
    ("icon.PNG", "image/png"),
    ("site.webmanifest", "application/manifest+json"),
    ("a.b.css", "text/css; charset=utf-8"),
    (".env", None), ("..", None), ("a/b.js", None), ("a\\b.js", None), ("noext", None),
    ("run.sh", None), ("x.js ", None), ("", None),
])
def test_only_plain_names_of_known_kinds_are_servable(name: str, expected: str | None) -> None:
    assert content_type_of(name) == expected


def test_a_site_without_an_index_has_no_root() -> None:
    site = StaticSite.from_files({"app.js": b"1"})
    assert site.reply("/") is None
    assert site.reply("/static/app.js") is not None


def test_the_package_holds_the_page_and_the_client() -> None:
    site = StaticSite.from_package()
    for path in ("/", "/static/index.html", "/static/nexus-client.js", "/static/app.js",
                 "/static/style.css"):
        assert site.reply(path) is not None, path
    page = site.reply("/")
    assert page is not None
    assert b'src="/static/app.js"' in page.body


def test_a_missing_directory_is_an_empty_site() -> None:
    assert StaticSite.from_package("nexus_actors", "no-such-directory").routes == {}
