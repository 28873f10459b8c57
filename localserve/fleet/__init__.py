"""Past one machine (issue 15): several localserve nodes behind the LiteLLM proxy.

`litellm_config` asks each node what it serves and writes the proxy's config; the nodes'
side (`/health`, `/ready`, drain) is localserve.api.fleet. No home-made cluster protocol.
"""
