"""The `lamflow` command line (cli/main.py): the top layer, above flows/, tasks/, lamflow/, lam/."""
