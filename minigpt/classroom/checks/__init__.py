"""The checks, one module per assignment: CHECKS maps a part's name to a
function (student module, rng) that yields (sub-check name, callable); the
callable raises CheckFailed with what was compared, or returns a detail line.
Inputs come from the rng only, so each run draws new ones."""
