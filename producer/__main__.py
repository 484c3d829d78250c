"""``python -m producer`` is ``pleo-export``."""

from producer.cli import main

main(prog_name="pleo-export")
