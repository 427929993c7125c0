"""Kalshi WebSocket protocol core: units, signer, message parsing, sequence rules, commands.

Nothing in this package imports Django, so it can be tested, benchmarked and reused alone.
"""
