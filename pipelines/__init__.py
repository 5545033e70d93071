"""KFP pipelines the launchers run; each module compiles to a YAML template beside it.

Importing this package imports nothing heavy; the pipeline modules import kfp.
"""
