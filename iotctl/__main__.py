"""``python -m iotctl``: the same as the ``iotctl`` console script."""

from .main import main

main()
