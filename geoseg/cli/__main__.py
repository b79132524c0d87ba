"""``python -m geoseg.cli``."""

from geoseg.cli import main

main()
