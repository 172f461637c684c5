"""Evaluation: how well a registration matches, measured the same way for every method.

``metrics`` (Dice, HD95, intensity RMSE, folding, displacement; means over the five structures), ``clinical``
(volumes, ejection fractions, mass and wall thickness from label maps), ``evaluate`` (``cvae evaluate``: the paper's
table on a cohort) and ``figures`` (its box plots).
"""
