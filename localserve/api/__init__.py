"""The HTTP side: app assembly and lifecycle, middlewares, one module per API dialect, the
OpenAPI document.
"""
