"""The page: models, history, thresholds, decisions, runs and promotions in a browser.

`data` gathers a bounded period from the service, `svg` draws it server-side, `html` writes it.
"""
