"""`lmcompress auto`: a target in, a deployable model out (run.py; shapes.py times student shapes, summary.py hands back).

Named `search` because the API function `lmcompress.auto` would be shadowed by a subpackage of that name."""
