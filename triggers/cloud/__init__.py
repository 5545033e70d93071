"""The cloud adapters: Cloud Functions entry points, HTTP routes and their guard, ID-token auth,
the environment, wiring from it, structured logs, and `serve` (the functions on a laptop).
"""
