"""Run directories (rundir), their manifest (manifest) and the atomic files and locks they are written with (files)."""
