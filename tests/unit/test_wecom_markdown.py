"""Tests for markdown_to_wecom_markdown: the markdown subset of WeCom app messages, and
its round trip through markdown_to_wechat_text (how a markdown part goes out as text)."""

from __future__ import annotations

import random
import re

import pytest
from markdown_it import MarkdownIt

from endpoints.wechat import formatters
from endpoints.wechat.formatters import (
    markdown_to_wechat_text,
    markdown_to_wecom_markdown,
    utf8_len,
)

HS = "\u200a"  # before an ordered list item that starts a paragraph
NB = "\u00a0"
PIN = " " + NB  # the first indentation step of a line inside a list item
ZW = "\u200b"  # before a line whose text would start with markup

HEADINGS = [
    ("h1", "# Title", "# Title"),
    ("h3", "### Sub", "### Sub"),
    ("h6", "###### Deep", "###### Deep"),
    ("setext_h1", "Setext\n===", "# Setext"),
    ("setext_h2", "Sub\n---", "## Sub"),
    ("closing_hashes", "## 标题 ##", "## 标题"),
    ("inline_markup_kept", "## **粗** `x`", "## **粗** `x`"),
    ("br_joined", "# a<br>b", "# a b"),
    ("empty", "#\n\ntext", "text"),
    ("hash_without_space", "#hashtag", "#hashtag"),
    ("in_list_item_is_bold", "- a\n  ## 小标题", f"• a\n{PIN}**小标题**"),
    ("in_quote_is_bold", "> # 引用标题", "> **引用标题**"),
    ("bold_inside_nested_heading", "> ## **粗**体", "> **粗体**"),
]

INLINE = [
    ("bold", "**strong** __strong__", "**strong** **strong**"),
    ("cjk_lead_in", "**注意：**这是重点", "**注意：**这是重点"),
    ("cjk_quotes", "这是**“引用”**后面", "这是**“引用”**后面"),
    ("cjk_brackets", "中文**粗体（括号）**中文", "中文**粗体（括号）**中文"),
    ("bold_per_line", "**a\nb**", "**a**\n**b**"),
    ("nested_emphasis", "***both*** and *a **b** c*", "**both** and a **b** c"),
    ("italic_strike_dropped", "*em* _em_ ~~del~~", "em em del"),
    ("literal_products", "3*4=12 和 5*6=30", "3*4=12 和 5*6=30"),
    ("literal_intraword_strong", "foo**bar**baz", "foo**bar**baz"),
    ("power", "3**2 is nine", "3**2 is nine"),
    ("csharp", "C# 与 F#", "C# 与 F#"),
    ("snake_case", "snake_case_name", "snake_case_name"),
    ("code", "use `x = 1` now", "use `x = 1` now"),
    ("code_with_backticks", "``a `b` c``", "`` a `b` c ``"),
    ("code_keeps_markup", "`**not bold**`", "`**not bold**`"),
    ("code_in_bold", "**`x`**", "**`x`**"),
    ("escaped_stars_stay", "\\*not em\\*", "*not em*"),
]

LINKS = [
    ("link", "[文档](https://example.com/docs)", "[文档](https://example.com/docs)"),
    ("in_sentence", "详见[这里](https://x.com)。", "详见[这里](https://x.com)。"),
    ("text_is_url", "[https://x.y](https://x.y)", "https://x.y"),
    ("autolink", "<https://a.b/c>", "https://a.b/c"),
    ("email_autolink", "<me@x.com>", "me@x.com"),
    ("empty_text", "[](http://x.com)", "http://x.com"),
    ("styled_text", "[**粗**链接](http://x.com)", "[**粗**链接](http://x.com)"),
    ("text_on_one_line", "[a\nb](http://x.com)", "[a b](http://x.com)"),
    (
        "parentheses_encoded",
        "[a](https://en.wikipedia.org/wiki/Foo_(bar))",
        "[a](https://en.wikipedia.org/wiki/Foo_%28bar%29)",
    ),
    (
        "cjk_url_as_written",
        "[链接](https://例子.中国/路径?q=中文)",
        "[链接](https://例子.中国/路径?q=中文)",
    ),
    ("space_encoded", "[a](<b c.html>)", "[a](b%20c.html)"),
    ("image", "![架构图](https://x.com/a.png)", "[图片 架构图](https://x.com/a.png)"),
    ("image_no_alt", "![](https://x.com/a.png)", "[图片](https://x.com/a.png)"),
    ("image_styled_alt", "![*logo* 图](l.png)", "[图片 logo 图](l.png)"),
    ("image_in_link", "[![logo](l.png)](https://x.com)", "[图片 logo](l.png) (https://x.com)"),
    ("html_image", 'x <img src="a.png" alt="图"> y', "x [图片 图](a.png) y"),
]

LISTS = [
    ("bullets", "- a\n- b", "• a\n• b"),
    ("nested", "- a\n  - b\n    - c\n- d", f"• a\n{PIN}◦ b\n{PIN}  ▪ c\n• d"),
    ("ordered", "1. x\n2. y", f"{HS}1. x\n2. y"),
    ("ordered_start", "3. a\n4. b", f"{HS}3. a\n4. b"),
    ("ordered_paren", "1) a\n2) b", f"{HS}1) a\n2) b"),
    (
        "ordered_nested_bullets",
        "1. 步骤一\n   - 细节\n2. 步骤二",
        f"{HS}1. 步骤一\n{PIN}◦ 细节\n2. 步骤二",
    ),
    ("bullets_nested_ordered", "- a\n  1. x\n  2. y\n- d", f"• a\n{PIN}1. x\n{PIN}2. y\n• d"),
    (
        "ordered_in_ordered",
        "1. 准备\n   1. 下载\n   2. 安装\n2. 使用",
        f"{HS}1. 准备\n{PIN}1. 下载\n{PIN}2. 安装\n2. 使用",
    ),
    ("loose", "- a\n\n- b", "• a\n\n• b"),
    (
        "multi_paragraph_item",
        "1. 第一步\n\n   详细说明\n\n2. 第二步",
        f"{HS}1. 第一步\n\n{PIN}详细说明\n\n{HS}2. 第二步",
    ),
    ("inline_markup_in_items", "- **粗体**：说明\n- `code`", "• **粗体**：说明\n• `code`"),
    ("empty_item", "- a\n-\n- c", "• a\n•\n• c"),
    ("item_one_after_zero", "0. zero\n1. one", f"{HS}0. zero\n{ZW}1. one"),
    (
        "item_with_code",
        "- 安装：\n\n  ```\n  pip install x\n  ```",
        "• 安装：\n\n      pip install x",
    ),
    (
        "tight_item_ending_with_code",
        "1. a\n   ```\n   # x\n   ```\n2. b",
        f"{HS}1. a\n\n{PIN}  # x\n2. b",
    ),
    (
        "item_opening_with_code",
        "- ```\n  code first\n  more\n  ```",
        f"•   code first\n{PIN}  more",
    ),
    ("quote_in_item", "- a\n\n  > q", f"• a\n\n{PIN}> q"),
    ("quote_with_list", "> - a\n> - b", "> • a\n> • b"),
    ("quote_with_ordered", "> 1. a\n> 2. b", f"> {HS}1. a\n> 2. b"),
]

BLOCKS = [
    (
        "table_keeps_inline_markup",
        "| 名称 | 价格 |\n|---|---|\n| **苹果** | [官网](https://a.com) |",
        "名称：**苹果**\n价格：[官网](https://a.com)",
    ),
    (
        "table_rows",
        "| 名称 | 价格 |\n|---|---|\n| 苹果 | 5元 |\n| 香蕉 | 3元 |",
        "名称：苹果\n价格：5元\n\n名称：香蕉\n价格：3元",
    ),
    ("table_hash_header", "| # | 名称 |\n|---|---|\n| 1 | 苹果 |", "#：1\n名称：苹果"),
    (
        "fence_indented_four",
        "```python\ndef f(**kw):\n    # comment\n    return 1\n```",
        "    def f(**kw):\n        # comment\n        return 1",
    ),
    (
        "indented_code",
        "para\n\n    code line\n      indented",
        "para\n\n    code line\n      indented",
    ),
    ("empty_fence", "a\n\n```\n```\n\nb", "a\n\nb"),
    ("quote", "> 引用\n> 第二行", "> 引用\n> 第二行"),
    ("quote_nested", "> a\n>\n> > b", "> a\n>\n> > b"),
    (
        "quote_inline_markup",
        "> **注意**：见[文档](https://x.com)",
        "> **注意**：见[文档](https://x.com)",
    ),
    ("hr", "a\n\n***\n\nb", "a\n\n——————\n\nb"),
    ("html_block", "<div>\nhello <b>world</b>\n</div>", "hello world"),
    ("html_inline", "a <b>bold</b> c", "a bold c"),
    ("html_br", "line<br>next", "line\nnext"),
    ("html_comment", "<!-- c -->\n\ntext", "text"),
    ("font_tag_stripped", '<font color="info">绿</font>', "绿"),
    ("think", "<think>\n思考\n</think>\n\n答案", "答案"),
    (
        "details",
        "<details><summary>Thinking...</summary>\n\nI think\n\n</details>\n\n最终答案",
        "最终答案",
    ),
    ("empty", "", ""),
    ("whitespace", "  \n ", ""),
]

# Text that WeCom (or the text round trip) would read as markup: U+200B in front.
GUARDED = [
    ("escaped_heading", "\\# not a heading", f"{ZW}# not a heading"),
    ("escaped_quote", "\\> not a quote", f"{ZW}> not a quote"),
    ("escaped_bullet", "\\- not a list", f"{ZW}- not a list"),
    ("escaped_ordered", "1\\. not ordered", f"{ZW}1. not ordered"),
    ("br_then_number", "a<br>1. b", f"a\n{ZW}1. b"),
    ("html_heading_text", "<p># html</p>", f"{ZW}# html"),
    ("html_image_syntax", "<p>![a](b)</p>", f"!{ZW}[a](b)"),
    ("escaped_heading_in_item", "- x\n\n  \\# y", f"• x\n\n{PIN}{ZW}# y"),
]

ALL_CASES = [
    pytest.param(src, expected, id=f"{group}-{name}")
    for group, cases in [
        ("heading", HEADINGS),
        ("inline", INLINE),
        ("link", LINKS),
        ("list", LISTS),
        ("block", BLOCKS),
        ("guarded", GUARDED),
    ]
    for name, src, expected in cases
]


@pytest.mark.parametrize(("src", "expected"), ALL_CASES)
def test_markdown_to_wecom_markdown(src: str, expected: str) -> None:
    assert markdown_to_wecom_markdown(src) == expected


@pytest.mark.parametrize(("src", "expected"), ALL_CASES)
def test_every_case_converts_back_within_the_bound(src: str, expected: str) -> None:
    back = markdown_to_wechat_text(expected)
    guards = expected.count(ZW)
    assert utf8_len(back) <= utf8_len(markdown_to_wechat_text(src)) + 3 * guards


def test_exported() -> None:
    assert "markdown_to_wecom_markdown" in formatters.__all__


# ---------------------------------------------------------------------------
# round trip: WeCom markdown -> WeChat text
# ---------------------------------------------------------------------------

ANSWERS = {
    "install_guide": (
        "## 安装步骤\n\n"
        "**注意：**请先确认 Python 版本不低于 3.10。\n\n"
        "1. **创建虚拟环境**：\n"
        "   ```bash\n"
        "   # 创建并激活虚拟环境\n"
        "   python -m venv .venv\n"
        "   source .venv/bin/activate\n"
        "   ```\n"
        "2. **安装依赖**：执行 `pip install -r requirements.txt`\n"
        "   - 国内用户可加 `-i https://pypi.tuna.tsinghua.edu.cn/simple`\n"
        "   - 详见[官方文档](https://docs.python.org/zh-cn/3/library/venv.html)\n"
        "3. **启动服务**：`python main.py --port 8080`\n\n"
        "> 提示：Windows 用户请使用 `.venv\\Scripts\\activate`。\n"
    ),
    "comparison_table": (
        "# 手机对比\n\n"
        "以下是两款手机的主要参数：\n\n"
        "| 型号 | 价格 | 亮点 |\n"
        "|------|-----:|------|\n"
        "| 小米 14 | 3999元 | **徕卡**影像、[官网](https://www.mi.com) |\n"
        "| iPhone 15 | 5999元 | `A16` 芯片 |\n\n"
        "**结论：**预算有限选小米，注重生态选 iPhone。\n"
    ),
    "nested_lists": (
        "### 学习计划\n\n"
        "- 第一阶段：基础\n"
        "  - 语法：变量、函数、*类*\n"
        "  - 练习：每天 **30 分钟**\n"
        "    1. 刷题\n"
        "    2. 写小项目\n"
        "- 第二阶段：进阶\n"
        "  1. 阅读源码\n"
        "  2. 参与开源\n\n"
        "---\n\n"
        "加油！💪\n"
    ),
    "loose_steps": (
        "## 如何申请\n\n"
        "1. 登录[政务服务网](https://www.gjzwfw.gov.cn)。\n\n"
        "   首次登录需要实名认证。\n\n"
        "2. 填写申请表：\n\n"
        "   | 字段 | 说明 |\n"
        "   |---|---|\n"
        "   | 姓名 | 与身份证一致 |\n"
        "   | 电话 | 11 位手机号 |\n\n"
        "3. 提交后等待 **3～5 个工作日**。\n"
    ),
    "code_answer": (
        "下面是一个 Python 示例：\n\n"
        "```python\n"
        "def fib(n: int) -> int:\n"
        "    # 递归实现\n"
        "    if n < 2:\n"
        "        return n\n"
        "    return fib(n - 1) + fib(n - 2)\n\n"
        "print([fib(i) for i in range(10)])  # **不是粗体**\n"
        "```\n\n"
        "运行结果为 `[0, 1, 1, 2, 3, 5, 8, 13, 21, 34]`。时间复杂度是 O(2^n)，"
        "可以用 *记忆化* 优化到 O(n)。\n"
    ),
    "images_and_links": (
        "## 架构\n\n"
        "![系统架构图](https://example.com/img/arch.png)\n\n"
        "核心组件：\n\n"
        "- 网关：见 <https://example.com/gateway>\n"
        "- 存储：[对象存储 (OSS)](https://help.aliyun.com/product/31815.html)\n"
        "- 监控：![](https://example.com/img/grafana.png)\n\n"
        "参考：[维基百科](https://zh.wikipedia.org/wiki/微服务_(软件架构))\n"
    ),
    "quotes": (
        "> **重要提醒**\n>\n"
        "> 1. 请勿泄露验证码\n"
        "> 2. 官方不会索要密码\n>\n"
        "> > 引用自《安全手册》\n\n"
        "以上内容仅供参考。\n"
    ),
    "thinking_model": (
        "<think>\n用户问的是天气，我需要……\n</think>\n\n"
        "## 今日天气\n\n"
        "北京：**晴**，15～25℃，~~有雨~~ 无雨。\n\n"
        "- 早晚温差大，注意添衣\n"
        "- 紫外线强，*建议防晒*\n\n"
        "计算：3*4=12，2*x + 3*y。\n"
    ),
    "faq": (
        "# 常见问题\n\n"
        "## 1. 如何重置密码？\n\n"
        "打开**设置** → **账号与安全** → **重置密码**。\n\n"
        "## 2. 收不到验证码怎么办？\n\n"
        "- 检查手机是否欠费\n"
        "- 等待 60 秒后重试\n"
        "- 联系客服：<support@example.com>\n\n"
        "## 3. 支持哪些支付方式？\n\n"
        "| 方式 | 手续费 |\n|---|---|\n| 微信支付 | 0 |\n| 支付宝 | 0 |\n| 银行卡 | 0.6% |\n"
    ),
    "mixed_html": (
        "好的，这是结果：<br>第一行<br>第二行\n\n"
        '<div align="center">\n<b>居中标题</b>\n</div>\n\n'
        "1. 步骤一<br>补充说明\n"
        "2. 步骤二\n"
    ),
    "deep_loose_list": (
        "- 一级\n\n"
        "  - 二级\n\n"
        "    - 三级 **重点**\n\n"
        "      三级的说明，见[链接](https://x.com)\n\n"
        "      ```\n      code in level three\n      ```\n"
    ),
}

_HEADING_PARSER = MarkdownIt("commonmark")


def _h1_h2_count(markdown: str) -> int:
    return sum(
        tok.type == "heading_open" and tok.tag in ("h1", "h2")
        for tok in _HEADING_PARSER.parse(markdown)
    )


def _visible(text: str) -> str:
    """What a reader sees, give or take spacing and the brackets of 图片/links."""
    return re.sub(r"[\s\[\]()]", "", text)


@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_realistic_answer_round_trip(name: str) -> None:
    src = ANSWERS[name]
    wecom = markdown_to_wecom_markdown(src)
    text = markdown_to_wechat_text(src)
    back = markdown_to_wechat_text(wecom)
    assert ZW not in wecom  # nothing in these answers needs a guard
    assert utf8_len(back) <= utf8_len(text) + 4 * _h1_h2_count(src)
    assert utf8_len(back) <= utf8_len(text)  # the bound this function actually keeps
    assert _visible(back) == _visible(text)


def test_round_trip_of_a_full_answer_reads_like_the_text_rendering() -> None:
    src = ANSWERS["install_guide"]
    wecom = markdown_to_wecom_markdown(src)
    assert wecom == (
        "## 安装步骤\n\n"
        "**注意：**请先确认 Python 版本不低于 3.10。\n\n"
        f"{HS}1. **创建虚拟环境**：\n\n"
        f"{PIN}  # 创建并激活虚拟环境\n"
        f"{PIN}  python -m venv .venv\n"
        f"{PIN}  source .venv/bin/activate\n"
        "2. **安装依赖**：执行 `pip install -r requirements.txt`\n"
        f"{PIN}◦ 国内用户可加 `-i https://pypi.tuna.tsinghua.edu.cn/simple`\n"
        f"{PIN}◦ 详见[官方文档](https://docs.python.org/zh-cn/3/library/venv.html)\n"
        "3. **启动服务**：`python main.py --port 8080`\n\n"
        "> 提示：Windows 用户请使用 `.venv\\Scripts\\activate`。"
    )
    assert markdown_to_wechat_text(wecom) == (
        "【安装步骤】\n\n"
        "注意：请先确认 Python 版本不低于 3.10。\n\n"
        "1. 创建虚拟环境：\n\n"
        "# 创建并激活虚拟环境\n"
        f"{NB}  python -m venv .venv\n"
        f"{NB}  source .venv/bin/activate\n"
        "2. 安装依赖：执行 pip install -r requirements.txt\n"
        f"{NB}◦ 国内用户可加 -i https://pypi.tuna.tsinghua.edu.cn/simple\n"
        f"{NB}◦ 详见官方文档 (https://docs.python.org/zh-cn/3/library/venv.html)\n"
        "3. 启动服务：python main.py --port 8080\n\n"
        "> 提示：Windows 用户请使用 .venv\\Scripts\\activate。"
    )


def test_nested_list_round_trip_keeps_numbers_and_indentation() -> None:
    back = markdown_to_wechat_text(markdown_to_wecom_markdown(ANSWERS["nested_lists"]))
    assert back.split("\n")[2:9] == [
        "• 第一阶段：基础",
        f"{NB}◦ 语法：变量、函数、类",
        f"{NB}◦ 练习：每天 30 分钟",
        f"{NB}  1. 刷题",
        f"{NB}  2. 写小项目",
        "• 第二阶段：进阶",
        f"{NB}1. 阅读源码",
    ]


def test_code_block_round_trip_is_exact() -> None:
    src = ANSWERS["code_answer"]
    assert markdown_to_wechat_text(markdown_to_wecom_markdown(src)) == markdown_to_wechat_text(src)


def _generated_documents(count: int) -> list[str]:
    pieces = [
        *(src for _, src, _ in HEADINGS + INLINE + LINKS + LISTS + BLOCKS + GUARDED),
        *ANSWERS.values(),
    ]
    rng = random.Random(20240607)
    docs: list[str] = []
    for _ in range(count):
        doc = rng.choice(["\n\n", "\n", " "]).join(rng.sample(pieces, rng.randint(1, 5)))
        wrap = rng.random()
        if wrap < 0.15:
            doc = "- " + doc.replace("\n", "\n  ")
        elif wrap < 0.3:
            doc = "1. " + doc.replace("\n", "\n   ")
        elif wrap < 0.4:
            doc = "> " + doc.replace("\n", "\n> ")
        docs.append(doc)
    return docs


def test_round_trip_bound_on_generated_documents() -> None:
    for doc in _generated_documents(400):
        wecom = markdown_to_wecom_markdown(doc)
        back = markdown_to_wechat_text(wecom)
        allowance = utf8_len(markdown_to_wechat_text(doc)) + 3 * wecom.count(ZW)
        assert utf8_len(back) <= allowance, doc
        assert "\x00" not in wecom


@pytest.mark.parametrize(
    "src",
    [
        "***",
        "*",
        "-",
        "#",
        ">",
        "|",
        "```",
        "[",
        "]]>",
        "<",
        "\x00",
        "**" * 50,
        "*" * 1000,
        "`" * 1000,
        "[" * 2000,
        "> " * 300 + "x",
        "- " * 300 + "x",
        "1. " * 300 + "x",
        "|a|\n|-|\n" + "|x|\n" * 500,
        "".join("  " * depth + f"- item{depth}\n" for depth in range(60)),
    ],
    ids=lambda src: repr(src[:12]),
)
def test_pathological_inputs(src: str) -> None:
    wecom = markdown_to_wecom_markdown(src)
    back = markdown_to_wechat_text(wecom)
    assert utf8_len(back) <= utf8_len(markdown_to_wechat_text(src)) + 3 * wecom.count(ZW)
    assert "\x00" not in wecom


def test_unusual_literal_markup_falls_back_to_escaped_text() -> None:
    # Removing the HTML tags puts "**" between "4" and "1": read back, that would be
    # printed literally (3*4 style) and be longer than the text rendering.
    src = "3*4<b></b>**1**"
    assert markdown_to_wechat_text(src) == "3*41"
    wecom = markdown_to_wecom_markdown(src)
    assert wecom == "3\\*41"
    assert markdown_to_wechat_text(wecom) == "3*41"


def test_escaped_fallback_converts_back_to_at_most_the_text() -> None:
    rng = random.Random(7)
    atoms = ["*", "_", "`", "#", "> ", "- ", "1. ", "[", "](u)", "![", "<b>", "&amp;", "\\", "|"]
    atoms += ["---", "===", "  ", "    ", "\n", "\n\n", "中文", "a", "3*4", "<https://a.b>", "~~"]
    for _ in range(300):
        text = markdown_to_wechat_text("".join(rng.choice(atoms) for _ in range(30)))
        escaped = formatters._escape_markdown(text)
        assert utf8_len(markdown_to_wechat_text(escaped)) <= utf8_len(text), text
