"""Plugin entry point: Dify's runner starts it with ``python -m main``."""

import logging

from dify_plugin import DifyPluginEnv, Plugin

# httpx logs full request URLs at INFO; WeChat API URLs carry access_token in the query.
for _noisy in ("httpx", "httpcore", "urllib3"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

plugin = Plugin(DifyPluginEnv(MAX_REQUEST_TIMEOUT=120))

if __name__ == "__main__":
    plugin.run()
