"""``/docs`` without a CDN: Swagger UI served from files in the package (an insurer's network often blocks CDNs).

FastAPI's own ``/docs`` loads Swagger UI from jsDelivr and its favicon from fastapi.tiangolo.com; build the
app with ``docs_url=None, redoc_url=None`` and call :func:`add_offline_docs` instead. The page loads its
script, style sheet and favicon from ``/docs/assets/`` (``static/docs/`` in the package), turns off
Swagger UI's online validator badge (which would send the schema's URL to validator.swagger.io), and
carries a Content-Security-Policy that lets the browser fetch nothing from another origin.

Vendored files (``static/docs/``): ``swagger-ui-bundle.js``, ``swagger-ui.css`` and ``favicon-32x32.png``
of the npm package ``swagger-ui-dist`` 5.35.0 (what FastAPI's CDN URL ``swagger-ui-dist@5`` points at),
unchanged, with its ``LICENSE`` (Apache-2.0), ``NOTICE`` and ``swagger-ui-bundle.js.LICENSE.txt`` (the
licences of the libraries bundled in the script). To update: ``npm pack swagger-ui-dist@<version>``
and copy those six files.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_STATIC = Path(__file__).parent / "static" / "docs"
SWAGGER_UI_VERSION = "5.35.0"
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")
#: same origin only; inline script and styles are the page's init script and Swagger UI's React styles
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'; font-src 'self' data:; frame-ancestors 'self'; "
       "base-uri 'self'; form-action 'self'")


def add_offline_docs(app: FastAPI, docs_url: str = "/docs", assets_url: str | None = None) -> None:
    """Serve Swagger UI at ``docs_url`` (and its OAuth2 redirect page) from the package's files.

    Raises:
        ValueError: the app has no OpenAPI schema (``openapi_url=None``), still has FastAPI's own CDN
            pages (create it with ``docs_url=None, redoc_url=None``), or a vendored file is missing.
    """
    if not app.openapi_url:
        raise ValueError("add_offline_docs: the app has no OpenAPI schema (openapi_url is None)")
    if app.docs_url or app.redoc_url:
        raise ValueError("add_offline_docs: create the app with docs_url=None, redoc_url=None (FastAPI's own "
                         "/docs and /redoc load their scripts from a CDN)")
    missing = [name for name in ASSETS if not (DOCS_STATIC / name).is_file()]
    if missing:
        raise ValueError(f"add_offline_docs: missing Swagger UI files in {DOCS_STATIC}: {', '.join(missing)}")
    assets = (assets_url or f"{docs_url.rstrip('/')}/assets").rstrip("/")
    openapi_url, redirect_url = app.openapi_url, app.swagger_ui_oauth2_redirect_url
    app.mount(assets, StaticFiles(directory=DOCS_STATIC), name="docs-assets")

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        page = get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=root + redirect_url if redirect_url else None,
            swagger_js_url=f"{root}{assets}/swagger-ui-bundle.js", swagger_css_url=f"{root}{assets}/swagger-ui.css",
            swagger_favicon_url=f"{root}{assets}/favicon-32x32.png",
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
            init_oauth=app.swagger_ui_init_oauth)
        page.headers["Content-Security-Policy"] = CSP
        return page

    if redirect_url:
        @app.get(redirect_url, include_in_schema=False)
        async def swagger_ui_redirect() -> HTMLResponse:
            page = get_swagger_ui_oauth2_redirect_html()
            page.headers["Content-Security-Policy"] = CSP
            return page
