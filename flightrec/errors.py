"""The one exception the library raises for bad input or a missing environment.

The CLI turns it into a single line on stderr and exit code 2.
"""


class FlightrecError(Exception):
    """Bad input, bad usage or an environment that cannot do what was asked."""
