"""Adaptive runtime decisions (issue 12): estimate the cluster's current conditions from the monitor's
measurements and choose which plan of a family to run. Head side only (numpy + the planner's evaluator)."""
