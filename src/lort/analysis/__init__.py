"""Analysis: accuracy by class and group, Logits Magnitude, Regularized Standard Deviation, plots."""
