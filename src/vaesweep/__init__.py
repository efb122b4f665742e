"""vaesweep."""
