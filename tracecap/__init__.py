"""tracecap: the contract every process shares (bus, options, kinds, keys, privileges), the
console script and the front end. The version is declared here once (pyproject.toml reads it)."""

__version__ = "0.1.0"
