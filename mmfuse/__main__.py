"""`python -m mmfuse` runs the command line."""

from mmfuse.cli import main

if __name__ == "__main__":
    main()
