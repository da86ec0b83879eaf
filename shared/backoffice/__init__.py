"""The shared library of the back-office services."""
