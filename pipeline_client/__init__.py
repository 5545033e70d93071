"""Pipeline launchers (local kfp, Vertex AI) behind one small protocol.

Adapters import their SDKs lazily, on first use, so the function's cold start stays small.
"""
