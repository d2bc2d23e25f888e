"""`python -m minircnn.train`."""

from minircnn import cli
from minircnn.train.command import main

cli.run(main)
