"""What the service and the pipeline's steps share: launching runs (`launching/`) and promoting
their models (`promotion/`). Imports nothing from `triggers/`: it also runs in the pipeline image.

Adapters import their SDKs lazily, on first use, so the function's cold start stays small.
"""
