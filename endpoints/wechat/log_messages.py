"""Every log text of the plugin, in one place, checked once for what they may contain.

Rules: no token, EncodingAESKey, AppSecret, access token or URL with a query string; no
message content at INFO or above (only types, hashed ids and reasons).
"""

REFUSED_REQUEST = "Refused a WeChat %s request: %s"
NOT_CONFIGURED = "Endpoint is not configured: %s. Open the endpoint URL in a browser for details."
PLAINTEXT_WITH_KEY = (
    "WeChat sent a plaintext message but an EncodingAESKey is configured: refused. Set the "
    "console's 消息加解密方式 to 安全模式 (safe) or clear the EncodingAESKey setting."
)
ENCRYPTED_WITHOUT_KEY = (
    "WeChat sent an encrypted message but no valid EncodingAESKey is configured: refused. "
    "Copy the EncodingAESKey from the WeChat console into the endpoint settings."
)
LOOKS_LIKE_WECOM = (
    "A WeCom (企业微信) callback reached an Official Account endpoint: refused. Set the "
    "endpoint's platform to wecom, or paste the /wecom URL into the WeCom console."
)
LOOKS_LIKE_OFFICIAL_ACCOUNT = (
    "An Official Account request reached a WeCom endpoint: refused. Set the endpoint's "
    "platform to official_account and paste the /wechat URL into the WeChat console."
)
WRONG_AGENT = (
    "A WeCom message for another app (its AgentID differs from the agent_id setting) was "
    "refused: each WeCom app needs its own endpoint with its own AgentId."
)
APP_FAILED = "Dify app call failed for message %s (%s): %s"
APP_TOO_SLOW = "Dify app answered after the reply window of message %s; the answer was dropped"
ANSWER_LOST = "No answer for message %s within WeChat's deliveries; sent the too-slow reply"
MESSAGE_RECEIVED = "Received %s message %s"
REPLIED = "Replied to message %s (%s, %d part(s))"
HANDLER_FAILED = "Handling message %s failed unexpectedly; sent the error reply"
INTERNAL_ERROR = "Unexpected error while handling a WeChat %s request"
BOOKKEEPING_FAILED = "Storage housekeeping failed; the reply is unaffected"
HANDED_OFF = "Message %s is still being answered after WeChat's last delivery; it goes by %s"
REFUSED_WORKER = "Refused a worker call: %s"
