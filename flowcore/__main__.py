"""``python -m flowcore``: the same command as the ``flowcore`` script."""

from .cli import main

if __name__ == "__main__":
    main()
