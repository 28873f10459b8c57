"""The operations behind every API: prompt rendering, options, and the one generate/chat/embed
flow.
"""
