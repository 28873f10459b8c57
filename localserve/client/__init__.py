"""The client side: the typed HTTP client, background-daemon management, UI-neutral display
helpers.
"""
