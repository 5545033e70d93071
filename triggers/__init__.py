"""retrain-trigger's decision logic: events, guards, state stores, the service, its entry points.

Imports nothing heavy: cloud SDKs load inside the adapter that needs them, on first use.
"""
