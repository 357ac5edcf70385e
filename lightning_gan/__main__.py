"""``python -m lightning_gan``: the same command as the ``lightning-gan`` console script."""

from lightning_gan.cli import main

if __name__ == "__main__":
    main()
