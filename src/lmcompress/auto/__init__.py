"""`lmcompress auto`: a target in, a deployable model out (search.py; shapes.py times student shapes)."""
