"""Entry point: ``python -m itnet_ext.bench``."""
from .cli import main

if __name__ == "__main__":
    main()
