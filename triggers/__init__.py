"""retrain-trigger's decision service: the core at the top (service, events, outcomes, config,
ids, errors); `state/` (stores), `cloud/` (entry points, HTTP, serve, wiring), `tools/` (CLI).

Imports nothing heavy: cloud SDKs load inside the adapter that needs them, on first use.
"""
