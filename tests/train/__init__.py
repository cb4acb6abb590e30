"""Tests of nemofn.train (a package, so module names cannot clash with other test folders)."""
