"""Fixed user-facing texts (the configurable ones live in settings.py)."""

MORE_HINT = "\n\n（内容较长，回复「{keyword}」查看后续）"
PUSH_MORE_HINT = "\n\n（内容较长，后续部分马上发送）"
UNREAD_HINT = "\n\n（你还有一条之前的回答没有收到，回复「{keyword}」查看）"
ANSWER_EXPIRED = "抱歉，之前的回答没能保存下来，请重新提问。"
CONVERSATION_CLEARED = "好的，已开始新的对话，之前的内容我不会再参考了。"
EMPTY_ANSWER = "（应用没有给出回答）"
HELP_TEMPLATE = """可用指令：
/clear 或 /新对话 —— 开始新的对话
/help 或 /帮助 —— 查看本说明
「{keyword}」 —— 回答较长时，获取后续内容

直接发送文字、图片、语音、链接或位置即可提问。"""
FULL_ANSWER_LINK = '\n\n<a href="{url}">阅读全文</a>'
FULL_ANSWER_MARKDOWN_LINK = "\n\n[阅读全文]({url})"
WELCOME_QUERY = "你好"
