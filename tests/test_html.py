"""The article pages say where the method helps most and least, and keep the colour legend in view."""
import re

import torch

from dynlm.eval.aggregate import article_rows
from dynlm.eval.html import article_page


def _css_rule(page: str, selector: str) -> str:
    rule = re.search(re.escape(selector) + r"\s*\{([^}]*)\}", page.split("</style>")[0])
    assert rule, f"no CSS rule for {selector}"
    return rule.group(1)


def test_the_colour_legend_stays_visible_while_scrolling():
    static, meta = torch.tensor([3.0, 2.0, 5.0, 1.0]), torch.tensor([1.0, 2.0, 6.0, 1.0])
    page = article_page("Title", 2, ["a", "b", "<eos>", "c"], "word", static, meta, "meta", scale=2.0)
    rule = _css_rule(page, ".legend")
    assert re.search(r"position:\s*sticky", rule) and re.search(r"top:\s*0", rule)
    assert re.search(r"background:\s*white", rule)  # the text scrolling under it does not show through
    body = page.split("<body>")[1]
    assert body.index('class="legend"') < body.index('class="text"')  # above the text it explains


def test_pages_name_the_articles_where_the_method_helps_most_and_least():
    from dynlm.eval.html import helps_most_least  # imported here: the legend test above does not need it

    # Three articles: the method gains 1 nat/token on the first, loses 0.5 on the second, the third is short.
    n = [120, 150, 20]
    article_id = torch.repeat_interleave(torch.arange(3), torch.tensor(n))
    static = torch.full((sum(n),), 5.0)
    meta = static - torch.repeat_interleave(torch.tensor([1.0, -0.5, 3.0]), torch.tensor(n))
    titles = ["Homarus gammarus", "M @-@ 82 ( Michigan highway )", "Short one"]
    rows = article_rows({"static": static, "meta": meta}, article_id, titles, n)
    extremes = helps_most_least(rows, "meta", min_tokens=100)  # the short article is not a candidate
    assert [(e.label, e.index, e.title) for e in extremes] == [
        ("helps most", 0, "Homarus gammarus"), ("helps least", 1, "M @-@ 82 ( Michigan highway )")]
    assert abs(extremes[0].gain - 1.0) < 1e-9 and abs(extremes[1].gain + 0.5) < 1e-9

    for index, role, other in ((0, "helps most", 1), (1, "helps least", 0)):
        page = article_page(titles[index], index, ["x"] * n[index], "word", static[:1].repeat(n[index]),
                            meta[article_id == index], "meta", extremes=extremes, linked=[0, 1])
        head = re.search(r"<h2>(.*)</h2>", page).group(1)
        assert f"(meta {role})" in head  # the page says what it is
        body = page.split("<body>")[1]
        # Both articles are named by (readable) title, with their role; the other one is a link.
        assert "meta helps most: " in body and "meta helps least: " in body
        assert "0: Homarus gammarus" in body and "1: M-82 (Michigan highway)" in body
        assert f'<a href="article_{other}.html">' in body and f'<a href="article_{index}.html">' not in body
        assert "Short one" not in body

    # Without the other page written (articles picked by hand) the title is named but not linked.
    page = article_page(titles[2], 2, ["x"] * n[2], "word", static[:20], meta[article_id == 2], "meta",
                        extremes=extremes, linked=[2])
    assert "Homarus gammarus" in page and "<a href" not in page and "(meta helps" not in page
