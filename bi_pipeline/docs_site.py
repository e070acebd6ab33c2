"""The GX Data Docs, readable offline and served over HTTP on 127.0.0.1.

GX writes pages that load Bootstrap, jQuery, bootstrap-table, Font Awesome and Vega from CDNs, a logo from S3 (with
the data context id in its URL) and build the index tables in JavaScript: without internet the index is empty and
the status icons are blank. None of those libraries ships with great_expectations, so each page GX writes is
rewritten once: external scripts, stylesheets and links removed, a small stylesheet and a few lines of plain
JavaScript inlined, the index tables written out as HTML. Browsers do not open ``file://`` links from an http page
(the Dagster UI), so ``serve_docs`` serves the site and ``docs_url`` is what the check metadata links to.
"""

from __future__ import annotations

import ast
import html
import os
import re
from collections.abc import Callable, Iterable
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bi_pipeline.config import Settings

LOCAL_HOSTS = ("127.0.0.1", "localhost")
# Marks a page already rewritten: GX rewrites only the pages of the validation it just ran (and the index).
OFFLINE_MARK = '<meta name="bi-pipeline-offline" content="1">'

_EXTERNAL_SCRIPT = re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']https?://[^>]*>\s*</script>", re.I | re.S)
_EXTERNAL_LINK = re.compile(r"<link\b[^>]*\bhref\s*=\s*[\"']https?://[^>]*>", re.I | re.S)
_GX_ASSET = re.compile(r"https?://great-expectations-web-assets\.[^\"')\s]*")
_FAVICON = re.compile(r"href=\"[./]*static/images/favicon\.ico\"")
_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.I | re.S)
_FOOTER = re.compile(r"<footer\b[^>]*>.*?</footer>", re.I | re.S)
_EXTERNAL_ANCHOR = re.compile(r"<a\b[^>]*\bhref\s*=\s*[\"']https?://[^>]*>(.*?)</a>", re.I | re.S)
_CLEAR_FILTERS = re.compile(r"<button\b[^>]*clearTableFilters[^>]*>.*?</button>", re.I | re.S)
_TAG = re.compile(r"<[^>]+>")
_TABLE_SCRIPT = re.compile(
    r"\$\('#(?P<id>[^']+)'\)\.bootstrapTable\(.*?^\s*columns: (?P<columns>\[.*?\]),\s*$"
    r"\s*^\s*data: (?P<data>\[.*?\]),\s*$",
    re.S | re.M,
)

# Enough of Bootstrap's look for GX's markup: layout, cards, tables, alerts; Font Awesome icons as characters.
_STYLE = """<style>
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;font-size:14px;color:#212529;
margin:0;background:#fff}
a{color:#0062cc;text-decoration:none}a:hover{text-decoration:underline}
h4{font-size:1.3rem}h5{font-size:1.15rem}h6{font-size:1rem}h4,h5,h6{margin:.4rem 0}
.col-lg-2 h4{font-size:1.1rem}.lead{font-size:1.05rem}
.m-0{margin:0!important}.mb-0{margin-bottom:0!important}.p-0{padding:0!important}
nav.navbar{display:flex;align-items:center;padding:6px 16px;border-bottom:1px solid #dee2e6;height:auto!important}
.navbar-brand img{height:40px!important}
.d-flex{display:flex;align-items:center;flex-wrap:wrap}
ol.breadcrumb{display:flex;flex-wrap:wrap;list-style:none;margin:0 0 0 16px;padding:0}
.breadcrumb-item+.breadcrumb-item::before{content:"/";padding:0 6px;color:#6c757d}
.container-fluid{padding:12px 20px;box-sizing:border-box}
.row{display:flex;flex-wrap:wrap}
.col-lg-2{flex:0 0 230px;max-width:230px;padding-right:16px;box-sizing:border-box}
.col-md-10{flex:1 1 0;min-width:0}
.col-12{flex:0 0 100%;max-width:100%;box-sizing:border-box}
.col-6{flex:0 0 50%;max-width:50%;box-sizing:border-box}
.card{border:1px solid #dee2e6;border-radius:4px;margin-bottom:12px}
.card-header{background:#f7f7f9;padding:6px 10px;border-bottom:1px solid #dee2e6}
.card-body{padding:8px 10px}
.alert-secondary{background:#e2e3e5;border:1px solid #d6d8db;border-radius:4px;padding:8px 12px;margin:6px 0}
.ge-section{margin-bottom:16px}
table{border-collapse:collapse;margin:6px 0}
td,th{border-top:1px solid #dee2e6;padding:4px 8px;text-align:left;vertical-align:top}
thead th{border-bottom:2px solid #dee2e6}
.table{width:100%}
.text-danger{color:#dc3545}.text-success{color:#28a745}.text-warning{color:#b38600}
.fas,.far,.fa{font-style:normal}
.fa-check-circle::before{content:"\\2714"}.fa-times::before,.fa-times-circle::before{content:"\\2718"}
.fa-question-circle::before{content:"?"}.fa-exclamation-triangle::before{content:"\\26A0"}
.fa-comment::before{content:"\\2709"}
.nav-tabs{display:flex;list-style:none;padding:0;margin:8px 0;border-bottom:1px solid #dee2e6}
.nav-tabs .nav-link{display:block;padding:6px 12px}
.nav-pills{list-style:none;padding:0;margin:0}
.tab-pane{margin-bottom:24px}
.btn-group label{margin-right:10px}
pre,code{white-space:pre-wrap;word-break:break-word}
</style>"""

# GX's "Failed Only" filter without jQuery.
_SCRIPT_FILTER = """<script>
function bipFilter(show){
  var d=show?"":"none";
  document.querySelectorAll(".hide-succeeded-validation-target-child").forEach(function(e){e.parentElement.style.display=d;});
  document.querySelectorAll(".hide-succeeded-validation-target").forEach(function(e){e.style.display=d;});
  document.querySelectorAll(".hide-succeeded-validations-column-section-target-child").forEach(function(e){
    var s=e.parentElement&&e.parentElement.parentElement; if(!s){return;}
    s.style.display=d;
    if(s.id){document.querySelectorAll('a[href$="#'+s.id+'"]').forEach(function(a){a.style.display=d;});}
  });
}
function showAllValidations(){bipFilter(true);}
function hideSucceededValidations(){bipFilter(false);}
</script>"""


def site_dir(gx_dir: Path) -> Path:
    """The Data Docs site GX builds in the file context under ``gx_dir``."""
    return Path(gx_dir) / "gx" / "uncommitted" / "data_docs" / "local_site"


def site_url(port: int, page: str | Path | None = None) -> str:
    base = f"http://127.0.0.1:{port}/"
    return base + quote(Path(page).as_posix()) if page else base


def docs_url(settings: Settings, page: str | Path | None = None) -> str:
    """The URL ``bi-pipeline docs`` serves the site (or one page of it, a path inside the site) on."""
    return site_url(settings.docs_port, page)


# --- offline pages -------------------------------------------------------------------------------------------


def offline_html(text: str, prefix: str = "") -> str:
    """A GX page that needs nothing from the network; ``prefix`` leads from the page back to the site root."""
    if OFFLINE_MARK in text:
        return text
    tables = {m.group("id"): _index_table(m.group("columns"), m.group("data")) for m in _TABLE_SCRIPT.finditer(text)}
    text = _EXTERNAL_SCRIPT.sub("", text)
    text = _EXTERNAL_LINK.sub("", text)
    # The logo is in the site's static folder: the S3 copy also reports the data context id to GX.
    text = _GX_ASSET.sub(f"{prefix}static/images/logo-long.png", text)
    # GX's validation pages point one folder short for the icon.
    text = _FAVICON.sub(f'href="{prefix}static/images/favicon.ico"', text)
    # Every inline script needs jQuery or Bootstrap; the page reads without them.
    text = _SCRIPT.sub("", text)
    text = _FOOTER.sub("", text)
    text = _EXTERNAL_ANCHOR.sub(r"\1", text)
    text = _CLEAR_FILTERS.sub("", text)
    for table_id, body in tables.items():
        if body is not None:
            text = re.sub(
                rf"(<table\b[^>]*\bid=\"{re.escape(table_id)}\"[^>]*>)\s*(</table>)",
                lambda m, body=body: m.group(1) + body + m.group(2),
                text,
                count=1,
            )
    head = f"{OFFLINE_MARK}\n{_STYLE}\n{_SCRIPT_FILTER}\n</head>"
    return text.replace("</head>", head, 1) if "</head>" in text else head + text


def _plain(value: Any) -> str:
    return " ".join(_TAG.sub(" ", html.unescape(str(value))).split())


def _index_table(columns_text: str, data_text: str) -> str | None:
    """One of GX's index tables (validation results, suites) as HTML rows: GX fills them in with bootstrap-table."""
    try:
        columns = ast.literal_eval(columns_text)
        rows = ast.literal_eval(data_text)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(columns, list) or not isinstance(rows, list):
        return None
    rows = [r for r in rows if isinstance(r, dict)]
    if any("_run_time_sort" in r for r in rows):
        rows = sorted(rows, key=lambda r: -float(r.get("_run_time_sort") or 0.0))
    else:
        rows = sorted(rows, key=lambda r: str(r.get("_expectation_suite_name_sort", "")))
    fields = [(c.get("field", ""), c.get("title", "")) for c in columns if isinstance(c, dict)]
    out = ["<thead><tr>" + "".join(f"<th>{html.escape(str(title))}</th>" for _, title in fields) + "</tr></thead>"]
    out.append("<tbody>")
    for row in rows:
        link = html.escape(str(row.get("_table_row_link_path", "")), quote=True)
        cells = []
        linked = False
        for name, _ in fields:
            if name == "validation_success":
                status = str(row.get("_validation_success_text", ""))
                css, mark = (
                    ("text-success", "\u2714") if status.lower().startswith("succ") else ("text-danger", "\u2718")
                )
                cells.append(f'<td class="{css}">{mark} {html.escape(status)}</td>')
                continue
            value = row.get(name, "")
            # GX's cells are HTML (icons, tooltips); its sort keys are the plain text, except the run time's.
            if "<" in str(value) and f"_{name}_sort" in row:
                value = row[f"_{name}_sort"]
            text = html.escape(_plain(value))
            if not linked and link:
                text, linked = f'<a href="{link}">{text}</a>', True
            cells.append(f"<td>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody>")
    return "\n".join(out)


def make_offline(site: Path, pages: Iterable[Path]) -> list[Path]:
    """Rewrite these pages of the site for offline reading (pages already rewritten are left as they are)."""
    site = Path(site)
    done = []
    for page in pages:
        page = Path(page)
        if not page.is_file():
            continue
        text = page.read_text(encoding="utf-8")
        if OFFLINE_MARK in text:
            continue
        prefix = "../" * (len(page.relative_to(site).parts) - 1)
        tmp = page.with_name(f".{page.name}.tmp")
        tmp.write_text(offline_html(text, prefix), encoding="utf-8")
        # Atomic: the server may be reading the page right now.
        os.replace(tmp, page)
        done.append(page)
    return done


def make_site_offline(site: Path) -> list[Path]:
    """Every page of the site (pages built before the rewrite existed included)."""
    return make_offline(site, sorted(Path(site).rglob("*.html")))


# --- serving -------------------------------------------------------------------------------------------------


class DocsNotBuilt(FileNotFoundError):
    pass


class _Handler(SimpleHTTPRequestHandler):
    def end_headers(self) -> None:
        # Pages change after every run.
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


def serve_docs(
    gx_dir: Path,
    port: int,
    host: str = "127.0.0.1",
    on_ready: Callable[[ThreadingHTTPServer], None] | None = None,
) -> None:
    """Serve the Data Docs site under ``gx_dir`` on http://host:port/ until interrupted (or ``shutdown()``).

    Only a loopback address: the pages hold values from the landed files. ``on_ready`` gets the server once it
    listens (its ``server_address`` has the port when ``port`` is 0).
    """
    if host not in LOCAL_HOSTS:
        raise ValueError(f"the Data Docs are served on the loopback address only (127.0.0.1), not {host!r}")
    site = site_dir(gx_dir)
    if not (site / "index.html").is_file():
        raise DocsNotBuilt(
            f"no GX Data Docs under {site}: they are built when the pipeline validates data; "
            "run it once (bi-pipeline run, or materialize clean_sales), then serve them again"
        )
    make_site_offline(site)
    server = ThreadingHTTPServer((host, port), partial(_Handler, directory=str(site)))
    try:
        bound = server.server_address[1]
        print(f"Serving the GX Data Docs from {site} on http://{host}:{bound}/ (Ctrl+C to stop)", flush=True)
        if on_ready is not None:
            on_ready(server)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
