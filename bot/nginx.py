"""The nginx configuration that serves the static index tree with PEP 691 negotiation."""

from __future__ import annotations

import re
from pathlib import Path

# Media types of PEP 691; the JSON page is index.json, the HTML page index.html in each
# directory of simple/, as bot.index writes them.
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_TYPE = "text/html; charset=utf-8"

_LISTEN = re.compile(r"^[0-9A-Za-z.:\[\]_-]+$")

_TEMPLATE = """\
# wheelstock: the index tree at {root}, served by nginx with PEP 691 content negotiation.
# Goes inside http {{ }} (for example /etc/nginx/conf.d/wheelstock.conf); made by
# `wheelstock index nginx-conf`.

# ?format= names the wanted media type and wins over Accept (PEP 691); "/" and "+" may come
# percent-encoded. An unknown format is answered 406.
map $arg_format $wheelstock_by_format {{
    default 406;
    "" "";
    "~*^application(/|%2F)vnd\\.pypi\\.simple\\.(v1|latest)(\\+|%2B)json$" index.json;
    "~*^application(/|%2F)vnd\\.pypi\\.simple\\.(v1|latest)(\\+|%2B)html$" index.html;
    "~*^text(/|%2F)html$" index.html;
}}

# Accept: JSON when the client offers a PEP 691 JSON type with a q-value above zero (pip and
# uv do, preferring it); HTML otherwise, which is also the answer to */* or no Accept at all.
# nginx cannot weigh q-values against each other, so a client that offers JSON with a lower
# q than HTML still gets JSON, which PEP 691 clients read.
map $http_accept $wheelstock_by_accept {{
    default index.html;
    "~*application/vnd\\.pypi\\.simple\\.(v1|latest)\\+json(?!\\s*;\\s*q\\s*=\\s*0(\\.0*)?\\s*(,|;|$))" index.json;
}}

map $wheelstock_by_format $wheelstock_page {{
    "" $wheelstock_by_accept;
    default $wheelstock_by_format;
}}

server {{
    listen {listen};
    root {root};

    # Hidden files (the publish lock, an interrupted write's temporary files) are never served.
    location ~ /\\. {{
        return 404;
    }}
    location = / {{
        return 302 /simple/;
    }}
    location = /simple {{
        return 301 /simple/;
    }}
    # A page: the same URL is the JSON or the HTML file, by ?format= or Accept; the rewrite
    # hands it to the location below that gives that file its media type.
    location ~ ^/simple/([^/]+/)?$ {{
        if ($wheelstock_page = 406) {{
            return 406;
        }}
        rewrite ^ $uri$wheelstock_page last;
    }}
    location ~ ^/simple/([^/]+/)?index\\.json$ {{
        types {{ }}
        default_type {json_type};
        add_header Vary Accept always;
    }}
    location ~ ^/simple/([^/]+/)?index\\.html$ {{
        types {{ }}
        default_type "{html_type}";
        add_header Vary Accept always;
    }}
    # Wheels and their PEP 658 .metadata files.
    location /files/ {{
        types {{ }}
        default_type application/octet-stream;
    }}
    # The public key that signs each wheel's provenance document.
    location /keys/ {{
        types {{ }}
        default_type application/x-pem-file;
    }}
    location / {{
        return 404;
    }}
}}
"""


def config(root: Path, listen: str = "127.0.0.1:8080") -> str:
    """The server block (and its maps) for the index tree at ``root``, listening on ``listen``."""
    if not _LISTEN.match(listen):
        raise ValueError(f"{listen!r} is not an address nginx can listen on (e.g. 8080)")
    where = str(root.resolve())
    # The path goes into the file unquoted; refuse what would end or split a directive.
    if any(c in where for c in ';{}"\'\n\\ '):
        raise ValueError(f"{where!r}: nginx's root cannot hold spaces, quotes, braces or ';'")
    return _TEMPLATE.format(root=where, listen=listen, json_type=JSON_TYPE, html_type=HTML_TYPE)
