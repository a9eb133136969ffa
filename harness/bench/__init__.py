"""(moved: see the package docstring to come)"""
