"""How an option is declared (declare.py) and the value checks most options use (checks.py):
the bottom layer that every component declaring its own settings section may import."""
