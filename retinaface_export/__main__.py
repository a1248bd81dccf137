"""``python -m retinaface_export COMMAND ...``: every command in one group (the console scripts stay)."""

from retinaface_export.cli.entry import module_main

if __name__ == "__main__":
    module_main()
