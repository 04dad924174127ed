"""python -m builders ROOT [--role R] [--size full]: see builders/__init__.py."""
from builders import main

main()
