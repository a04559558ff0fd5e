"""Serving engines (torch; vLLM behind an optional extra).

Kept import-free so that loading one engine never pulls in another's heavy dependencies.
"""
