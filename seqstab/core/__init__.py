"""The stations of the one optimization path, without Lightning (a rule ``tests/test_imports.py`` holds for every file
under this folder): the update core and its record, clipping, the explosion guard and its diagnosis, the gradient
monitor, truncation policies; and what they share (errors, atomic file IO, class recipes)."""
