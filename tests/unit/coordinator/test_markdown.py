"""The dashboard's Markdown filter (essaim.coordinator.dashboard.formatting.markdown): a model card
is shown as a document, and whatever a researcher or a volunteer put in it stays text."""

from __future__ import annotations

import re

from essaim.coordinator.dashboard.formatting import markdown


def test_a_model_card_renders_as_a_document() -> None:
    html = markdown(
        "# demo-llama\n\nFine-tuned by **3 volunteers**.\n\n## Evaluation\n\n"
        "| metric | before | after |\n|---|---:|:---:|\n| exact_match | 0.000 | 0.915 |\n\n"
        "- [recipe](https://example.org/recipe.yaml)\n\n```\nloss 2.31\n```\n")
    assert "<h1>demo-llama</h1>" in html and "<h2>Evaluation</h2>" in html
    assert "<strong>3 volunteers</strong>" in html
    assert '<td class="align-right">0.000</td>' in html and '<td class="align-center">0.915</td>' in html
    assert "style=" not in html  # the pages' Content-Security-Policy refuses inline styles
    assert '<a href="https://example.org/recipe.yaml" rel="nofollow noopener noreferrer">recipe</a>' in html
    assert "<pre><code>loss 2.31\n</code></pre>" in html


def test_raw_html_and_unsafe_links_stay_inert() -> None:
    hostile = (
        "<script>alert(1)</script>\n\n<img src=x onerror=alert(2)>\n\n"
        "volunteer <b onmouseover=alert(3)>eve</b>\n\n"
        "[click](javascript:alert(4)) [data](data:text/html;base64,PHNjcmlwdD4=) [file](file:///etc/passwd)\n\n"
        "![pic](javascript:alert(5)) [v](vbscript:msgbox(6))\n\n"
        '| a |\n|---|\n| <iframe src="https://evil.example"></iframe> |\n')
    html = str(markdown(hostile))
    assert not re.search(r"<(script|img|b|iframe)\b", html), html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;img src=x onerror=alert(2)&gt;" in html
    assert not re.search(r'(href|src)="\s*(javascript|vbscript|data|file):', html, re.I), html
    assert "on" + "error=" not in html.replace("onerror=alert(2)&gt;", "")  # only as escaped text


def test_nothing_renders_as_nothing() -> None:
    assert markdown(None) == "" and markdown("") == ""
