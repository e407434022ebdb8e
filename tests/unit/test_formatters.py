"""Tests for endpoints/wechat/formatters.py: markdown rendering, splitting, reply XML."""

from __future__ import annotations

import random
import re
import time
import xml.etree.ElementTree as ET
from itertools import pairwise

import pytest
import xmltodict

from endpoints.wechat.formatters import (
    SUCCESS_BODY,
    TEXT_BUDGET_BYTES,
    cdata,
    has_tables_or_images,
    image_reply_xml,
    markdown_to_wechat_text,
    render_wechat_text,
    split_text,
    text_reply_xml,
    utf8_len,
)

# ---------------------------------------------------------------------------
# markdown_to_wechat_text
# ---------------------------------------------------------------------------

HEADINGS = [
    ("h1", "# Title", "【Title】"),
    ("h2_cjk", "## 小节", "【小节】"),
    ("h3_plain", "### Sub", "Sub"),
    ("h6_plain", "###### Deep", "Deep"),
    ("closing_hashes", "## 标题 ##", "【标题】"),
    ("setext_h1", "Setext\n===", "【Setext】"),
    ("setext_h2", "Sub\n---", "【Sub】"),
    ("heading_then_para", "# 标题\n正文", "【标题】\n\n正文"),
    ("heading_inline_markup", "## **粗** `x`", "【粗 x】"),
    ("empty_heading", "#\n\ntext", "text"),
    ("hash_without_space", "#hashtag", "#hashtag"),
]

PARAGRAPHS = [
    ("plain", "hello world", "hello world"),
    ("plain_cjk", "你好，世界。\n这是第二行。", "你好，世界。\n这是第二行。"),
    ("blank_lines_collapse", "a\n\n\n\nb", "a\n\nb"),
    ("softbreak_kept", "第一行\n第二行\n第三行", "第一行\n第二行\n第三行"),
    ("hardbreak_spaces", "a  \nb", "a\nb"),
    ("hardbreak_backslash", "a\\\nb", "a\nb"),
    ("trailing_and_edge_whitespace", "\n\n  hello  \n\n", "hello"),
    ("crlf", "a\r\nb\r\n\r\nc", "a\nb\n\nc"),
    ("empty", "", ""),
    ("whitespace_only", " \n\t\n ", ""),
]

INLINE = [
    ("emphasis", "*em* _em_ **strong** __strong__ ~~del~~", "em em strong strong del"),
    ("nested_emphasis", "***both*** and *a **b** c*", "both and a b c"),
    ("inline_code", "use `x = 1` now", "use x = 1 now"),
    ("inline_code_backticks", "``a `b` c``", "a `b` c"),
    ("code_keeps_markup", "`**not bold**`", "**not bold**"),
    ("code_in_strong", "**`x`**", "x"),
    ("entities", "A &amp; B &lt; C &copy; &#20013;", "A & B < C © 中"),
    ("escapes", "\\*not em\\* \\# x \\[y\\]", "*not em* # x [y]"),
    ("cjk_strong", "**加粗**文本", "加粗文本"),
    ("cjk_em", "这是*强调*文本", "这是强调文本"),
    ("cjk_strong_after_punct", "**注意：**这是重点", "注意：这是重点"),
    ("cjk_strong_quotes", "这是**“引用”**后面", "这是“引用”后面"),
    ("cjk_strong_brackets", "中文**粗体（括号）**中文", "中文粗体（括号）中文"),
    (
        "cjk_two_bolds",
        "**注意：**这是重点。这是**“引用”**后面。",
        "注意：这是重点。这是“引用”后面。",
    ),
]

HARMLESS = [
    ("multiplication", "3*4=12", "3*4=12"),
    ("two_products", "3*4=12 和 5*6=30", "3*4=12 和 5*6=30"),
    ("algebra", "2*x + 3*y", "2*x + 3*y"),
    ("power", "3**2 is nine", "3**2 is nine"),
    ("csharp", "C# 与 F#", "C# 与 F#"),
    ("snake_case", "snake_case_name", "snake_case_name"),
    ("generics", "List<String> 与 Map<K, V>", "List<String> 与 Map<K, V>"),
    ("angle_cjk", "请输入<用户名>和<密码>", "请输入<用户名>和<密码>"),
    ("comparison", "a < b > c", "a < b > c"),
    ("percent_tilde", "100% ~/path $5", "100% ~/path $5"),
    ("bare_url", "见 https://x.com/a_b_c 页面", "见 https://x.com/a_b_c 页面"),
    ("year_like_list", "2024. 是个好年", "2024. 是个好年"),
    ("lone_stars", "**", "**"),
    ("lone_underscores", "__", "__"),
    ("intraword_strong_ascii", "foo**bar**baz", "foo**bar**baz"),
]

CODE = [
    (
        "fence",
        "text\n```python\ndef f():\n    return 1\n```\nafter",
        "text\n\n  def f():\n      return 1\n\nafter",
    ),
    ("tilde_fence", "~~~\nraw *text*\n~~~", "  raw *text*"),
    (
        "fence_keeps_markdown",
        "```\n**not bold** # no\n- no list\n```",
        "  **not bold** # no\n  - no list",
    ),
    ("fence_keeps_html", "```html\n<b>x</b> &amp;\n```", "  <b>x</b> &amp;"),
    ("indented_code", "para\n\n    code line\n      indented", "para\n\n  code line\n    indented"),
    ("unclosed_fence", "```\nunclosed\n  fence", "  unclosed\n    fence"),
    ("empty_fence", "a\n\n```\n```\n\nb", "a\n\nb"),
    ("fence_blank_lines", "```\na\n\n\nb\n```", "  a\n\n  b"),
]

LISTS = [
    ("bullets", "- a\n- b", "• a\n• b"),
    ("star_plus_bullets", "* a\n* b\n\n+ c", "• a\n• b\n\n• c"),
    ("nested", "- a\n  - b\n    - c\n- d", "• a\n  ◦ b\n    ▪ c\n• d"),
    ("nested_cycles", "- 1\n  - 2\n    - 3\n      - 4", "• 1\n  ◦ 2\n    ▪ 3\n      • 4"),
    ("ordered", "1. x\n2. y", "1. x\n2. y"),
    ("ordered_start", "3. a\n4. b", "3. a\n4. b"),
    ("ordered_lazy_numbers", "1. a\n1. b\n1. c", "1. a\n2. b\n3. c"),
    ("ordered_paren", "1) a\n2) b", "1) a\n2) b"),
    ("ordered_nested_bullets", "1. 步骤一\n   - 细节\n2. 步骤二", "1. 步骤一\n  ◦ 细节\n2. 步骤二"),
    ("bullets_nested_ordered", "- a\n  1. x\n  2. y", "• a\n  1. x\n  2. y"),
    ("loose", "- a\n\n- b", "• a\n\n• b"),
    (
        "multi_paragraph_item",
        "1. 第一步\n\n   详细说明\n\n2. 第二步",
        "1. 第一步\n\n  详细说明\n\n2. 第二步",
    ),
    (
        "item_with_code",
        "- 安装：\n\n  ```\n  pip install x\n  ```",
        "• 安装：\n\n    pip install x",
    ),
    ("item_softbreak", "- 第一行\n  第二行", "• 第一行\n  第二行"),
    ("task_list", "- [ ] todo\n- [x] done", "• [ ] todo\n• [x] done"),
    ("list_between_paragraphs", "步骤：\n\n- a\n- b\n\n结束", "步骤：\n\n• a\n• b\n\n结束"),
    ("inline_markup_in_items", "- **粗体**：说明\n- `code`", "• 粗体：说明\n• code"),
    ("empty_item", "- a\n-\n- c", "• a\n•\n• c"),
]

TABLES = [
    (
        "basic",
        "| 名称 | 价格 |\n|---|---|\n| 苹果 | 5元 |\n| 香蕉 | 3元 |",
        "名称：苹果\n价格：5元\n\n名称：香蕉\n价格：3元",
    ),
    (
        "inline_markup_and_link",
        "| 名称 | 说明 |\n|:--|--:|\n| **苹果** | [官网](https://a.com) |",
        "名称：苹果\n说明：官网 (https://a.com)",
    ),
    ("empty_cell", "| a | b |\n|---|---|\n| 1 | |", "a：1\nb："),
    ("escaped_pipe", "| 表达式 |\n|---|\n| a \\| b |", "表达式：a | b"),
    ("empty_headers", "|  |  |\n|---|---|\n| a | b |\n| c | d |", "a | b\nc | d"),
    ("some_empty_header", "| | 值 |\n|---|---|\n| 行1 | 1 |", "行1\n值：1"),
    ("header_only", "| a | b |\n|---|---|", "a | b"),
    ("short_row_padded", "| a | b |\n|---|---|\n| 1 |", "a：1\nb："),
    ("br_in_cell", "| a |\n|---|\n| x<br>y |", "a：x\ny"),
    (
        "surrounded",
        "前言\n\n| k | v |\n|---|---|\n| 1 | 2 |\n\n后记",
        "前言\n\nk：1\nv：2\n\n后记",
    ),
]

LINKS = [
    ("link", "[文档](https://example.com/docs)", "文档 (https://example.com/docs)"),
    ("link_text_is_url", "[https://x.y](https://x.y)", "https://x.y"),
    ("autolink", "<https://a.b/c>", "https://a.b/c"),
    ("email_autolink", "<me@x.com>", "me@x.com"),
    ("relative", "[说明](./docs/readme.md)", "说明 (./docs/readme.md)"),
    ("anchor", "[上文](#intro)", "上文 (#intro)"),
    ("title_dropped", '[a](http://x.com "title")', "a (http://x.com)"),
    ("reference", "[a][1]\n\n[1]: http://x.com", "a (http://x.com)"),
    ("empty_text", "[](http://x.com)", "http://x.com"),
    ("styled_text", "[**粗**链接](http://x.com)", "粗链接 (http://x.com)"),
    ("cjk_url", "[链接](https://例子.中国/路径?q=中文)", "链接 (https://例子.中国/路径?q=中文)"),
    ("in_sentence", "详见[这里](https://x.com)。", "详见这里 (https://x.com)。"),
    ("image", "![架构图](https://x.com/a.png)", "[图片] 架构图 (https://x.com/a.png)"),
    ("image_no_alt", "![](https://x.com/a.png)", "[图片] https://x.com/a.png"),
    ("image_styled_alt", "![*logo* 图](l.png)", "[图片] logo 图 (l.png)"),
    ("image_in_link", "[![logo](l.png)](https://x.com)", "[图片] logo (l.png) (https://x.com)"),
]

BLOCKS = [
    ("quote", "> 引用\n> 第二行", "> 引用\n> 第二行"),
    ("quote_paragraphs", "> a\n>\n> b", "> a\n>\n> b"),
    ("quote_nested", "> a\n>\n> > b", "> a\n>\n> > b"),
    ("quote_list", "> - a\n> - b", "> • a\n> • b"),
    ("quote_lazy", "> a\nb", "> a\n> b"),
    ("hr", "a\n\n---\n\nb", "a\n\n——————\n\nb"),
    ("hr_stars", "***", "——————"),
    ("hr_underscores", "___", "——————"),
    ("html_block", "<div>\nhello <b>world</b>\n</div>", "hello world"),
    ("html_inline", "a <b>bold</b> c", "a bold c"),
    ("html_br", "line<br>next<br/>last", "line\nnext\nlast"),
    ("html_comment_inline", "a <!-- hidden --> b", "a  b"),
    ("html_comment_block", "<!-- c -->\n\ntext", "text"),
    ("html_script_dropped", "<script>alert(1)</script>\n\ntext", "text"),
    ("html_entities_in_block", "<p>A &amp; B</p>", "A & B"),
    ("html_img_inline", 'x <img src="a.png" alt="图"> y', "x [图片] 图 (a.png) y"),
    ("think_tags", "<think>\n思考\n</think>\n\n答案", "答案"),
    ("think_unterminated", "<think>\n思考\n\n答案", "答案"),
    ("think_inside_answer_kept", "用 `<think>` 标签\n\n<think>x</think>", "用 <think> 标签\n\nx"),
    (
        "details_block",
        "<details><summary>Thinking...</summary>\n\nI think\n\n</details>\n\n最终答案",
        "最终答案",
    ),
]

ALL_RENDER_CASES = [
    pytest.param(src, expected, id=f"{group}-{name}")
    for group, cases in [
        ("heading", HEADINGS),
        ("paragraph", PARAGRAPHS),
        ("inline", INLINE),
        ("harmless", HARMLESS),
        ("code", CODE),
        ("list", LISTS),
        ("table", TABLES),
        ("link", LINKS),
        ("block", BLOCKS),
    ]
    for name, src, expected in cases
]


@pytest.mark.parametrize(("src", "expected"), ALL_RENDER_CASES)
def test_markdown_to_wechat_text(src: str, expected: str) -> None:
    assert markdown_to_wechat_text(src) == expected


def test_full_answer_renders_readably() -> None:
    src = (
        "# 旅行建议\n\n"
        "以下是**三天**的行程：\n\n"
        "1. 第一天\n"
        "   - 上午：参观[故宫](https://www.dpm.org.cn)\n"
        "   - 下午：*自由活动*\n"
        "2. 第二天\n\n"
        "| 项目 | 费用 |\n"
        "|------|------|\n"
        "| 门票 | 60元 |\n"
        "| 交通 | 20元 |\n\n"
        "```bash\necho hi\n```\n\n"
        "> 提示：注意天气。\n\n"
        "---\n"
        "祝旅途愉快！"
    )
    assert markdown_to_wechat_text(src) == (
        "【旅行建议】\n\n"
        "以下是三天的行程：\n\n"
        "1. 第一天\n"
        "  ◦ 上午：参观故宫 (https://www.dpm.org.cn)\n"
        "  ◦ 下午：自由活动\n"
        "2. 第二天\n\n"
        "项目：门票\n费用：60元\n\n"
        "项目：交通\n费用：20元\n\n"
        "  echo hi\n\n"
        "> 提示：注意天气。\n\n"
        "——————\n\n"
        "祝旅途愉快！"
    )


@pytest.mark.parametrize(
    "src",
    [
        "***",
        "* * *",
        "*",
        "-",
        "#",
        ">",
        "|",
        "```",
        "```\n",
        "[",
        "]]>",
        "<",
        "\x00",
        "**" * 50,
        "*" * 1000,
        "_" * 1000,
        "`" * 1000,
        "[" * 2000,
        "<" * 2000,
        "> " * 300 + "x",
        "- " * 300 + "x",
        "1. " * 300 + "x",
        "|a|\n|-|\n" + "|x|\n" * 500,
    ],
    ids=lambda src: repr(src[:12]),
)
def test_pathological_inputs_do_not_crash(src: str) -> None:
    out = markdown_to_wechat_text(src)
    assert isinstance(out, str)
    assert "\n\n\n" not in out
    assert out == out.strip("\n")
    assert all(line == line.rstrip() for line in out.split("\n"))


def test_deeply_nested_list_keeps_every_item() -> None:
    src = "".join("  " * depth + f"- item{depth}\n" for depth in range(60))
    out = markdown_to_wechat_text(src)
    positions = [out.find(f"item{depth}") for depth in range(60)]
    assert -1 not in positions
    assert positions == sorted(positions)


def test_deeply_nested_quote_keeps_text() -> None:
    assert "deep" in markdown_to_wechat_text(">" * 200 + " deep")


def test_moderately_nested_list_is_rendered() -> None:
    src = "".join("  " * depth + f"- l{depth}\n" for depth in range(8))
    out = markdown_to_wechat_text(src).split("\n")
    assert out[0] == "• l0"
    assert out[7] == "  " * 7 + "◦ l7"


def test_emphasis_bomb() -> None:
    out = markdown_to_wechat_text("*" * 5000 + "a" + "*" * 5000)
    assert "a" in out


def test_100kb_answer() -> None:
    unit = (
        "## 小节\n\n段落 **粗体** 和 [链接](http://x.com) 以及 `code`，还有中文内容。\n\n"
        "- a\n- b\n\n| h | i |\n|--|--|\n| 1 | 2 |\n\n```\ncode\n```\n\n"
    )
    src = unit * (100_000 // utf8_len(unit) + 1)
    assert utf8_len(src) >= 100_000
    out = markdown_to_wechat_text(src)
    assert out.count("【小节】") == src.count("## 小节")
    for marker in ("**", "```", "##", "|--|"):
        assert marker not in out


def test_plain_text_passes_through() -> None:
    text = "这是一段普通的回答。\n没有任何格式，只有文字、数字 3.14 和标点！\n\n第二段。"
    assert markdown_to_wechat_text(text) == text


# ---------------------------------------------------------------------------
# utf8_len / split_text
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", 0), ("abc", 3), ("é", 2), ("中文", 6), ("😀", 4), ("👨‍👩‍👧", 18), ("\ud800", 3)],
)
def test_utf8_len(text: str, expected: int) -> None:
    assert utf8_len(text) == expected


def test_constants() -> None:
    assert TEXT_BUDGET_BYTES == 2048
    assert SUCCESS_BODY == "success"


@pytest.mark.parametrize("text", ["", " ", "\n\n", " \n \t\n"])
def test_split_empty(text: str) -> None:
    assert split_text(text) == []


def test_split_short_text_is_one_part() -> None:
    assert split_text("hello") == ["hello"]
    assert split_text("\n\nhello\n\n") == ["hello"]
    exact = "中" * (TEXT_BUDGET_BYTES // 3) + "ab"
    assert utf8_len(exact) == TEXT_BUDGET_BYTES
    assert split_text(exact) == [exact]
    assert len(split_text(exact + "c")) == 2


def test_split_rejects_tiny_budget() -> None:
    with pytest.raises(ValueError):
        split_text("abc", 3)


SPLIT_CASES = [
    # paragraph beats a later line break
    (
        "paragraph",
        "A" * 30 + "\n\n" + "B" * 30 + "\n" + "C" * 30,
        80,
        ["A" * 30, "B" * 30 + "\n" + "C" * 30],
    ),
    # a line break beats a later sentence end
    (
        "line",
        "甲甲甲甲甲。乙乙乙乙乙\n丙丙丙丙丙。丁丁丁丁丁",
        60,
        ["甲甲甲甲甲。乙乙乙乙乙", "丙丙丙丙丙。丁丁丁丁丁"],
    ),
    # a sentence end beats a later comma
    (
        "sentence",
        "这是第一句，还有逗号。这是第二句，也有逗号",
        45,
        ["这是第一句，还有逗号。", "这是第二句，也有逗号"],
    ),
    ("sentence_ascii", "One two. Three four five", 20, ["One two.", "Three four five"]),
    (
        "sentence_closing_quote",
        "他说：“好的。”然后走了。再见",
        25,
        ["他说：“好的。”", "然后走了。再见"],
    ),
    # a comma beats a hard cut
    ("comma", "一二三四五，六七八九十", 24, ["一二三四五，", "六七八九十"]),
    ("enumeration_comma", "苹果、香蕉、橙子", 18, ["苹果、香蕉、", "橙子"]),
    # whitespace is dropped at the cut
    ("space", "hello world foo", 12, ["hello world", "foo"]),
    ("fullwidth_space", "你好　世界", 10, ["你好", "世界"]),
    # dots inside numbers and domains are not sentence ends
    ("not_sentence", "see example.com and 3.14 now ok", 20, ["see example.com and", "3.14 now ok"]),
    # hard cuts never split a 3-byte character (10 is not a multiple of 3)
    ("hard_cjk", "中" * 10, 10, ["中中中", "中中中", "中中中", "中"]),
    ("hard_mixed", "a" + "中" * 5, 8, ["a中中", "中中", "中"]),
    ("hard_ascii", "x" * 25, 10, ["x" * 10, "x" * 10, "x" * 5]),
    # an emoji ZWJ sequence (25 bytes) is not cut when it fits
    ("zwj_family", "ab" + "👨‍👩‍👧‍👦" * 2, 30, ["ab👨‍👩‍👧‍👦", "👨‍👩‍👧‍👦"]),
    ("flags", "🇨🇳🇺🇸🇯🇵", 12, ["🇨🇳", "🇺🇸", "🇯🇵"]),
    ("combining", "e\u0301" * 6, 7, ["e\u0301e\u0301", "e\u0301e\u0301", "e\u0301e\u0301"]),
    # a boundary before a list item / code fence beats one inside the code block
    (
        "before_list_not_in_code",
        "intro\n```\nline1\n\nline2\nline3\n```\n- item one\n- item two",
        40,
        ["intro\n```\nline1\n\nline2\nline3\n```", "- item one\n- item two"],
    ),
    (
        "before_fence_not_in_code",
        "para one\n```\ncode a\n\ncode b\n```",
        30,
        ["para one", "```\ncode a\n\ncode b\n```"],
    ),
    (
        "before_bullet",
        "• 第一项说明文字\n  续行内容\n• 第二项",
        50,
        ["• 第一项说明文字\n  续行内容", "• 第二项"],
    ),
    # code indentation of the first line of a part is kept
    ("keeps_indent", "x" * 8 + "\n    code()", 12, ["x" * 8, "    code()"]),
    # blank lines at cut points never produce empty parts or leading newlines
    ("blank_runs", "a" * 8 + "\n\n\n\n\n" + "b" * 8, 10, ["a" * 8, "b" * 8]),
]


@pytest.mark.parametrize(
    ("text", "budget", "expected"),
    [pytest.param(text, budget, expected, id=name) for name, text, budget, expected in SPLIT_CASES],
)
def test_split_prefers_natural_boundaries(text: str, budget: int, expected: list[str]) -> None:
    assert split_text(text, budget) == expected


def test_split_small_paragraph_does_not_starve_part() -> None:
    # a blank line at 10 % of the budget loses to a line break that fills the part
    text = "A" * 8 + "\n\n" + "B" * 60 + "\n" + "C" * 30
    assert split_text(text, 80) == ["A" * 8 + "\n\n" + "B" * 60, "C" * 30]


def test_split_cjk_char_straddling_budget() -> None:
    text = "ab" + "中文" * 5  # bytes 8..10 of the budget fall inside the 3rd CJK char
    parts = split_text(text, 10)
    assert parts[0] == "ab中文"  # 8 bytes: the straddling char moves to the next part
    assert parts[1] == "中文中"
    for part in parts:
        assert utf8_len(part) <= 10
        part.encode("utf-8")  # whole code points only
    assert "".join(parts) == text


_WORDS = [
    "hello",
    "world",
    "Dify",
    "3.14",
    "example.com",
    "你好",
    "世界",
    "中文回答",
    "。",
    "，",
    "、",
    "！",
    "？",
    ".",
    ",",
    "😀",
    "👍🏽",
    "👨‍👩‍👧",
    "🇨🇳",
    "e\u0301",
    " ",
    " ",
    " ",
    "\n",
    "\n",
    "\n\n",
    "\u3000",
    "- ",
    "```",
    "• ",
    "x" * 40,
    "长" * 30,
]


def _random_text(rng: random.Random) -> str:
    size = rng.choice([5, 50, 300, 1500])
    return "".join(rng.choice(_WORDS) for _ in range(size))


def _non_space(text: str) -> str:
    return "".join(text.split())


def test_split_properties_random() -> None:
    rng = random.Random(20240611)
    budgets = [10, 11, 12, 13, 16, 25, 64, 100, 333, 512, 1000, 2047, 2048]
    for _ in range(400):
        text = _random_text(rng)
        budget = rng.choice([*budgets, rng.randint(10, 2048)])
        parts = split_text(text, budget)
        for part in parts:
            assert part, (text, budget)
            assert utf8_len(part) <= budget, (part, budget)
            assert part == part.strip("\n")
            assert part == part.rstrip()
            part.encode("utf-8")
        # every non-whitespace character survives, in order
        assert "".join(_non_space(part) for part in parts) == _non_space(text)
        # every part is a verbatim slice of the text, in order
        cursor = 0
        for part in parts:
            found = text.find(part, cursor)
            assert found != -1
            cursor = found + len(part)
        if budget >= 30:
            for part in parts:  # emoji sequences are not torn apart
                assert not part.startswith(("\u200d", "\U0001f3fd", "\u0301"))
                assert not part.endswith("\u200d")


def test_split_cuts_are_whitespace_only_between_parts() -> None:
    rng = random.Random(7)
    for _ in range(100):
        text = _random_text(rng)
        budget = rng.randint(10, 600)
        cursor = 0
        for part in split_text(text, budget):
            found = text.find(part, cursor)
            assert found != -1
            # greedy search can only find an earlier equal slice; the gap must be blank
            assert text[cursor:found].strip() == ""
            cursor = found + len(part)
        assert text[cursor:].strip() == ""


def test_split_budget_default_and_chinese_answer() -> None:
    paragraph = "这是一个用于测试的中文段落，包含逗号、句号。" * 20
    text = "\n\n".join(paragraph for _ in range(10))
    parts = split_text(text)
    assert all(utf8_len(part) <= TEXT_BUDGET_BYTES for part in parts)
    assert all(part.endswith("。") for part in parts)  # natural boundaries everywhere
    assert _non_space("".join(parts)) == _non_space(text)


def test_split_200kb() -> None:
    unit = "第一段内容，包含中文和 English words. 还有 emoji 😀！\n- 列表项\n\n```\ncode\n```\n"
    text = unit * (200_000 // utf8_len(unit) + 1)
    parts = split_text(text)
    assert all(utf8_len(part) <= TEXT_BUDGET_BYTES for part in parts)
    assert _non_space("".join(parts)) == _non_space(text)
    # pathological shapes
    for text in ("x" * 200_000, "中" * 70_000, " a" * 100_000, "\n" * 100_000 + "z", "。" * 70_000):
        parts = split_text(text)
        assert all(utf8_len(part) <= TEXT_BUDGET_BYTES for part in parts)


def test_split_rendered_markdown() -> None:
    src = "\n\n".join(
        f"## 第{i}节\n\n- 要点一\n- 要点二\n\n| 名称 | 值 |\n|--|--|\n| a | {i} |"
        for i in range(80)
    )
    parts = split_text(markdown_to_wechat_text(src), 300)
    assert all(utf8_len(part) <= 300 for part in parts)
    # cuts fall on blank lines, so every part starts with a heading or a block
    assert all(part.startswith(("【", "•", "名称")) for part in parts)


# --- structure-aware splitting of rendered answers ----------------------------------------

_SETUP_SCRIPT = """git clone https://example.com/app.git
cd app

python3.12 -m venv .venv
source .venv/bin/activate

pip install -r requirements.txt"""

_SETTINGS_CODE = """import os


def load_settings():
    # - not a list item, # not a heading
    return {
        "host": os.environ.get("HOST", "0.0.0.0"),
        "port": int(os.environ.get("PORT", "8000")),
    }

1. not a list either


if __name__ == "__main__":
    print(load_settings())"""

_BIG_CODE = "\n".join(
    f"    step_{i} = run('命令 {i}', retries={i % 3})" + ("\n" if i % 7 == 6 else "")
    for i in range(40)
)

_TABLE_ROWS = [
    ("HOST", "0.0.0.0", "监听地址，生产环境建议只监听内网地址，避免暴露到公网"),
    ("PORT", "8000", "监听端口"),
    ("WORKERS", "4", "工作进程数，一般设为 CPU 核数的两倍，内存紧张时适当调小"),
    ("TIMEOUT", "30", "单个请求的超时时间（秒）"),
]


def _guide_section(index: int) -> str:
    rows = "\n".join(f"| {name}_{index} | {value} | {note} |" for name, value, note in _TABLE_ROWS)
    return f"""## 第{index}部分：准备工作

下面是第{index}部分的完整步骤，请按顺序操作，每一步完成后再继续下一步。

1. **检查系统版本**：确认服务器运行的是 Ubuntu 22.04 或更新版本，
   并且有至少 2 GB 可用内存和 10 GB 磁盘空间。
   - 运行 `lsb_release -a` 查看版本
   - 运行 `free -h` 查看内存
2. **安装依赖**：需要 Python 3.12 和 Git。
   如果系统自带的 Python 版本较旧，可以使用 deadsnakes 软件源安装新版本。
   - 添加软件源
   - 更新索引
     - 注意：更新可能需要几分钟
     - 网络不好时可以换用国内镜像
   - 安装 Python
3. **创建用户**：为应用单独创建一个系统用户，避免使用 root 运行。

### 安装代码

先克隆仓库并创建虚拟环境：

```bash
{_SETUP_SCRIPT}
```

然后写配置文件：

```python
{_SETTINGS_CODE}
```

## 第{index}部分：参数说明

| 参数 | 默认值 | 说明 |
|------|--------|------|
{rows}

## 第{index}部分：常见问题

- **启动失败**：检查端口是否被占用。
  可以运行 `ss -lntp` 查看是哪个进程占用了端口。
- **访问缓慢**：检查工作进程数是否过少，
  或者数据库连接是否耗尽。
  - 调大连接池
  - 开启缓存
- **日志过多**：把日志级别调成 WARNING。
"""


GUIDE = "# 部署指南\n\n" + "\n".join(_guide_section(i) for i in range(1, 4)) + "\n祝部署顺利！"

FAQ = f"""# Troubleshooting notes

Short intro.

1. First, make sure the service is **running**. This item is loose and has several
   paragraphs, so it renders with blank lines inside the item.

   Check the status with the command below and look for `active (running)`:

   ```
   systemctl status app
   journalctl -u app -n 50
   ```

   - If it is stopped, start it.
   - If it keeps restarting, read the log.
     The log usually says which setting is wrong.

2. Second, check the configuration file. Every key must be spelled exactly as in the
   documentation; unknown keys are ignored silently.

3. Third, run the full diagnostic script:

```python
{_BIG_CODE}
```

## Summary

Most problems are configuration mistakes. If nothing helps, collect the logs and open a
ticket with the output of every command above.

| Symptom | Cause |
|--|--|
| 502 | the app is down |
| slow | too few workers |
"""

_GUIDE_CODE = [_SETUP_SCRIPT, _SETTINGS_CODE]
_FAQ_CODE = ["systemctl status app\njournalctl -u app -n 50", _BIG_CODE]


def _code_span(text: str, code: str) -> tuple[int, int]:
    """Where a code block's lines sit in the rendered text, whatever their indentation."""
    lines = code.split("\n")  # the rendering keeps at most one blank line in a row
    lines = [line for i, line in enumerate(lines) if line.strip() or lines[i - 1].strip()]
    pattern = "\n".join(" *" + re.escape(line) if line.strip() else "" for line in lines)
    found = re.search("(?m)^" + pattern + "$", text)
    assert found, code[:40]
    return found.start(), found.end()


def _row_spans(text: str) -> list[tuple[int, int]]:
    spans = []
    for index in range(1, 4):
        for name, value, note in _TABLE_ROWS:
            row = f"参数：{name}_{index}\n默认值：{value}\n说明：{note}"
            start = text.find(row)
            assert start != -1, row
            spans.append((start, start + len(row)))
    return spans


def _part_spans(text: str, parts: list[str]) -> list[tuple[int, int]]:
    """Each part is a verbatim slice of *text*, in order, with only whitespace between."""
    spans = []
    cursor = 0
    for part in parts:
        found = text.find(part, cursor)
        assert found != -1, part[:40]
        assert text[cursor:found].strip() == "", text[cursor:found][:40]
        spans.append((found, found + len(part)))
        cursor = found + len(part)
    assert text[cursor:].strip() == ""
    return spans


def _is_heading_line(line: str) -> bool:
    return line.startswith("【") and line.endswith("】")


_SPACE_RUN = re.compile(r"\s*")


def _block_boundary_in_reach(
    text: str, start: int, budget: int, protected: list[tuple[int, int]]
) -> bool:
    """True if a part starting at *start* could have ended, at least a third full, at a line
    break between two top-level blocks: the next line is not indented (no list item or code
    block goes on), the previous one is not a heading and no code block/table row is cut."""
    cut = text.find("\n", start)
    while cut != -1:
        size = utf8_len(text[start:cut])
        if size > budget:
            return False
        before = text[start:cut].rstrip()
        space = _SPACE_RUN.match(text, cut)
        after = space.end() if space else cut
        if (
            size >= budget // 3
            and before
            and after < len(text)
            and text[after - 1] == "\n"
            and not _is_heading_line(before.rsplit("\n", 1)[-1])
            and not any(lo < cut < hi for lo, hi in protected)
        ):
            return True
        cut = text.find("\n", cut + 1)
    return False


def _check_structured_split(
    markdown: str, budget: int, codes: list[str], with_rows: bool
) -> list[str]:
    """Render and split *markdown*, and check the parts: within the budget and lossless;
    code blocks (*codes*) and table rows that fit in a part are whole in one part, bigger
    code blocks are cut at line breaks only; no part ends with a heading, unless it holds
    nothing else and the block after it fits in a part but not together with it; a part
    starts inside a list item or code block only if no boundary between blocks was in
    reach of the part before."""
    text = markdown_to_wechat_text(markdown)
    parts = split_text(text, budget)
    spans = _part_spans(text, parts)
    assert all(utf8_len(part) <= budget for part in parts)
    assert _non_space("".join(parts)) == _non_space(text)
    code_spans = [_code_span(text, code) for code in codes]
    row_spans = _row_spans(text) if with_rows else []
    protected = code_spans + row_spans
    for lo, hi in protected:
        if utf8_len(text[lo:hi]) <= budget:  # fits in a part: kept whole
            assert any(s <= lo and hi <= e for s, e in spans), (budget, text[lo:hi][:60])
        else:  # too big: cut only at line breaks
            for (_, end), (start, _) in pairwise(spans):
                if lo < start < hi:
                    assert "\n" in text[end:start], (budget, text[end - 20 : start + 20])
    starts = {lo for lo, _ in protected}
    for index, part in enumerate(parts):
        if _is_heading_line(part.rsplit("\n", 1)[-1]):
            # only when the part holds nothing but headings and the block after them fits
            # in a part, but not together with them
            assert all(_is_heading_line(line) for line in part.split("\n") if line), part
            assert index + 1 < len(parts), (budget, part)
            assert spans[index + 1][0] in starts, (budget, part, parts[index + 1][:60])
        if index and part.startswith(" ") and spans[index][0] not in starts:
            # starts inside a list item or a code block
            assert not _block_boundary_in_reach(text, spans[index - 1][0], budget, protected), (
                budget,
                parts[index - 1][-60:],
                part[:60],
            )
    return parts


@pytest.mark.parametrize("budget", [300, 400, 512, 600])
def test_split_guide_keeps_structure(budget: int) -> None:
    parts = _check_structured_split(GUIDE, budget, _GUIDE_CODE, True)
    assert len(parts) > 5


@pytest.mark.parametrize("budget", [300, 400, 512, 600])
def test_split_faq_keeps_structure(budget: int) -> None:
    parts = _check_structured_split(FAQ, budget, _FAQ_CODE, False)
    assert len(parts) > 3


def test_split_structure_many_budgets() -> None:
    for budget in range(200, 2048, 37):
        _check_structured_split(GUIDE, budget, _GUIDE_CODE, True)
        _check_structured_split(FAQ, budget, _FAQ_CODE, False)


def test_split_code_block_bigger_than_part_cut_at_lines() -> None:
    text = markdown_to_wechat_text(f"intro\n\n```\n{_BIG_CODE}\n```\n\nafter")
    parts = split_text(text, 200)
    code_lines = {line.strip() for line in _BIG_CODE.split("\n")}
    for part in parts:
        for line in part.split("\n"):  # no code line is torn apart
            assert line.strip() in code_lines or line in ("intro", "after")
    assert _non_space("".join(parts)) == _non_space(text)


STRUCTURE_SPLIT_CASES = [
    # a cut between top-level items beats a later one between sub-items
    (
        "top_level_item_boundary",
        "1. 第一项\n  ◦ 细节甲\n  ◦ 细节乙\n2. 第二项\n  ◦ 细节丙\n  ◦ 细节丁",
        80,
        ["1. 第一项\n  ◦ 细节甲\n  ◦ 细节乙", "2. 第二项\n  ◦ 细节丙\n  ◦ 细节丁"],
    ),
    # a blank line inside a loose item is not a block boundary
    (
        "loose_item",
        "1. 第一项\n\n  第一项的补充说明\n\n2. 第二项\n\n  第二项的补充说明",
        80,
        ["1. 第一项\n\n  第一项的补充说明", "2. 第二项\n\n  第二项的补充说明"],
    ),
    # a heading goes with its section, not at the end of the previous part
    (
        "heading_starts_part",
        "前言一二三四五\n\n【小节】\n\n正文一二三四五六七八九十",
        70,
        ["前言一二三四五", "【小节】\n\n正文一二三四五六七八九十"],
    ),
    # a code block that fits a part is not cut at its blank line
    (
        "code_kept_whole",
        "说明文字\n\n  def f():\n      return 1\n\n  def g():\n      return 2\n\n结束",
        60,
        ["说明文字", "  def f():\n      return 1\n\n  def g():\n      return 2\n\n结束"],
    ),
    # a table row block that fits a part is not cut, even for a fuller part
    (
        "table_row_kept",
        "前言\n\n名称：红富士苹果\n价格：每斤五元\n\n名称：香蕉\n价格：三元",
        50,
        ["前言", "名称：红富士苹果\n价格：每斤五元", "名称：香蕉\n价格：三元"],
    ),
    # a part opening with a heading ends after it only to keep the code block after it whole
    (
        "heading_keeps_code_whole",
        "【示例代码】\n\n" + "\n".join(f"  line{i} = {i}" for i in range(5)) + "\n\n结束语",
        70,
        ["【示例代码】", "\n".join(f"  line{i} = {i}" for i in range(5)) + "\n\n结束语"],
    ),
    # ... and otherwise keeps the first sentences of its section
    (
        "heading_keeps_first_sentences",
        "【标题】\n\n" + "这是一句话。" * 8,
        60,
        ["【标题】\n\n这是一句话。这是一句话。", "这是一句话。" * 3, "这是一句话。" * 3],
    ),
    # a heading alone only when the text after it cannot be cut (and never inside it)
    (
        "heading_before_unbreakable_text",
        "【标题！】\n\n" + "长" * 30,
        40,
        ["【标题！】", "长" * 13, "长" * 13, "长" * 4],
    ),
    # code written unindented between list items renders at the item's indent: still whole
    (
        "code_between_list_items",
        "1. 安装依赖：\n\n  pip install requests\n  pip install flask\n  pip install gunicorn"
        "\n\n2. 启动服务",
        70,
        [
            "1. 安装依赖：",
            "  pip install requests\n  pip install flask\n  pip install gunicorn",
            "2. 启动服务",
        ],
    ),
    # a giant item is cut between its sub-items rather than inside a sub-item
    (
        "sibling_sub_items",
        "• 主项\n  ◦ 子项一\n    续行一\n  ◦ 子项二\n    续行二",
        50,
        ["• 主项\n  ◦ 子项一\n    续行一", "  ◦ 子项二\n    续行二"],
    ),
]


@pytest.mark.parametrize(
    ("text", "budget", "expected"),
    [pytest.param(t, b, e, id=name) for name, t, b, e in STRUCTURE_SPLIT_CASES],
)
def test_split_respects_structure(text: str, budget: int, expected: list[str]) -> None:
    assert split_text(text, budget) == expected


def test_split_pathological_structures_are_fast() -> None:
    giant_item = "- " + "很长的内容，没有换行。" * 10_000
    deep = "".join("  " * (depth % 30) + f"- 项目{depth}\n" for depth in range(3000))
    item_lines = "1. 开始\n" + "   续行内容，继续说明。\n" * 5000
    code = "```\n" + "x = 1\n\n" * 10_000 + "```"
    emoji = "- " + "👨‍👩‍👧‍👦" * 5000
    for source in (giant_item, deep, item_lines, code, emoji):
        text = markdown_to_wechat_text(source)
        started = time.perf_counter()
        parts = split_text(text, 600)
        assert time.perf_counter() - started < 5  # linear: ~0.1 s
        assert all(utf8_len(part) <= 600 for part in parts)
        assert _non_space("".join(parts)) == _non_space(text)


# ---------------------------------------------------------------------------
# cdata / reply XML
# ---------------------------------------------------------------------------

TRICKY = [
    "",
    "plain",
    "]]>",
    "]]]]>",
    "a]]>b]]>c",
    "]]>]]>",
    "]",
    "]]",
    "<![CDATA[x]]>",
    "x]]",
    "<tag> & &amp; \"quotes\" 'apos'",
    "中文回答，带表情😀👨‍👩‍👧",
    "多行\n文本\n\n末尾",
    "tab\there",
]


@pytest.mark.parametrize("value", TRICKY)
def test_cdata_round_trip(value: str) -> None:
    doc = f"<xml><V>{cdata(value)}</V></xml>"
    assert (ET.fromstring(doc).find("V").text or "") == value  # type: ignore[union-attr]
    assert (xmltodict.parse(doc)["xml"]["V"] or "") == value


def test_cdata_splits_terminator() -> None:
    assert cdata("a]]>b") == "<![CDATA[a]]]]><![CDATA[>b]]>"
    assert cdata("x") == "<![CDATA[x]]>"


def test_cdata_drops_xml_illegal_characters() -> None:
    value = "a\x00b\x08c\x0bd\x1fe\ufffff\ud800g"
    doc = f"<xml><V>{cdata(value)}</V></xml>"
    assert ET.fromstring(doc).find("V").text == "abcdefg"  # type: ignore[union-attr]


def test_text_reply_xml_layout() -> None:
    xml = text_reply_xml("oUser", "gh_abc", "你好", 12345678)
    assert xml == (
        "<xml><ToUserName><![CDATA[oUser]]></ToUserName>"
        "<FromUserName><![CDATA[gh_abc]]></FromUserName>"
        "<CreateTime>12345678</CreateTime>"
        "<MsgType><![CDATA[text]]></MsgType>"
        "<Content><![CDATA[你好]]></Content></xml>"
    )
    assert not xml.startswith("<?xml")


@pytest.mark.parametrize("content", TRICKY)
def test_text_reply_xml_round_trip(content: str) -> None:
    xml = text_reply_xml("o]]>user", "gh_<x>", content, 1700000000)
    root = ET.fromstring(xml)
    assert [child.tag for child in root] == [
        "ToUserName",
        "FromUserName",
        "CreateTime",
        "MsgType",
        "Content",
    ]
    assert root.findtext("ToUserName") == "o]]>user"
    assert root.findtext("FromUserName") == "gh_<x>"
    assert root.findtext("CreateTime") == "1700000000"
    assert root.findtext("MsgType") == "text"
    assert root.findtext("Content") == content
    parsed = xmltodict.parse(xml)["xml"]
    assert list(parsed) == ["ToUserName", "FromUserName", "CreateTime", "MsgType", "Content"]
    assert (parsed["Content"] or "") == content
    assert parsed["CreateTime"] == "1700000000"


def test_text_reply_xml_with_split_parts() -> None:
    answer = markdown_to_wechat_text("**结论：** a]]>b & <c>\n\n" + "很长的内容。" * 1000)
    for part in split_text(answer):
        root = ET.fromstring(text_reply_xml("o", "gh", part, 1))
        assert root.findtext("Content") == part


def test_image_reply_xml() -> None:
    xml = image_reply_xml("oUser", "gh_abc", "MEDIA_ID]]>", 12345678)
    assert xml == (
        "<xml><ToUserName><![CDATA[oUser]]></ToUserName>"
        "<FromUserName><![CDATA[gh_abc]]></FromUserName>"
        "<CreateTime>12345678</CreateTime>"
        "<MsgType><![CDATA[image]]></MsgType>"
        "<Image><MediaId><![CDATA[MEDIA_ID]]]]><![CDATA[>]]></MediaId></Image></xml>"
    )
    parsed = xmltodict.parse(xml)["xml"]
    assert parsed["MsgType"] == "image"
    assert parsed["Image"]["MediaId"] == "MEDIA_ID]]>"


def test_render_wechat_text_says_whether_tables_or_images_need_a_page() -> None:
    table = "| 城市 | 气温 |\n|---|---|\n| 北京 | 25 |"
    for source, rich in (
        ("纯文字，a | b 不是表格", False),
        (table, True),
        ("看图 ![示意](https://example.com/a.png)", True),
        ("`![not an image](x)` in code", False),
    ):
        rendered = render_wechat_text(source)
        assert rendered.rich is rich, source
        assert rendered.text == markdown_to_wechat_text(source)
        assert has_tables_or_images(source) is rich, source
