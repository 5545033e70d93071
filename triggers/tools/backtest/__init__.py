"""Backtests: a metric history replayed through the service's own decision code (policies,
M-of-N, guards, run lifecycle) on an in-memory store and a simulated clock; threshold sweeps.

`io` reads histories and writes outputs, `replay` replays, `report` summarises, `sweep` sweeps,
`command` is the `retrain-trigger backtest` command.
"""
