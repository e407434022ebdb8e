"""Plugin entry point: Dify's runner starts it with ``python -m main``."""

import logging

from dify_plugin import DifyPluginEnv, Plugin
from dify_plugin.config.logger_format import plugin_logger_handler

from endpoints.wechat.sdk_tuning import tune_sdk

# httpx logs full request URLs at INFO; WeChat API URLs carry access_token in the query.
for _noisy in ("httpx", "httpcore", "urllib3"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

# Our own loggers reach Dify's plugin log through the SDK's handler.
_plugin_logger = logging.getLogger("endpoints")
_plugin_logger.setLevel(logging.INFO)
_plugin_logger.addHandler(plugin_logger_handler)
_plugin_logger.propagate = False

tune_sdk()

plugin = Plugin(DifyPluginEnv(MAX_REQUEST_TIMEOUT=120))

if __name__ == "__main__":
    plugin.run()
