"""The command line and what it runs: CLI, backtest, demo, quickstart, publish, doctor.

Tools sit on top of the service; nothing in the service imports them.
"""
