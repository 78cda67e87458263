"""wheelstock: a feedstock bot that builds wheels for projects that publish none."""

__version__ = "0.1.0.dev0"
