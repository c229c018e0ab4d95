"""Generate a small demo folder for ``make serve``: a page, text, a precompressed stylesheet
and a 16 MiB binary to try ranges and zero-copy downloads on.

Usage: ``python -m wirespeed.demo DIR`` (idempotent: existing files are kept).
"""

from __future__ import annotations

import gzip
import os
import sys

__all__ = ["make_demo"]

_INDEX = """<!doctype html>
<html><head><meta charset="utf-8"><title>wirespeed demo</title>
<link rel="stylesheet" href="style.css"></head>
<body><h1>wirespeed</h1>
<p>This folder is served zero-copy. Try:</p>
<ul>
<li><a href="hello.txt">hello.txt</a></li>
<li><code>curl -r 0-99 -o part.bin http://127.0.0.1:8080/sample.bin</code> (a range)</li>
<li><code>curl --compressed -v http://127.0.0.1:8080/style.css</code> (precompressed sibling)</li>
</ul></body></html>
"""

_CSS = "body { font-family: system-ui, sans-serif; max-width: 40em; margin: 2em auto; }\n" * 40


def make_demo(directory: str) -> None:
    """Create the demo files in ``directory`` (created if missing)."""
    os.makedirs(directory, exist_ok=True)

    def write(name: str, data: bytes) -> None:
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(data)

    write("index.html", _INDEX.encode())
    write("hello.txt", b"Hello, World!\n")
    write("style.css", _CSS.encode())
    write("style.css.gz", gzip.compress(_CSS.encode(), mtime=0))
    # Deterministic bytes, so a download can be checked against a known sha256.
    block = bytes(range(256)) * 4096  # 1 MiB
    write("sample.bin", block * 16)


if __name__ == "__main__":
    make_demo(sys.argv[1] if len(sys.argv) > 1 else "demo")
