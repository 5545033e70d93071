"""Promotion of a challenger over the champion: the rules, the statistical gate, the outcome
message and the model registries. Depends only on `thresholds` and the shared errors.
"""
