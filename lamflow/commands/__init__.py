"""Sub-commands of the `lamflow` CLI, one module per group."""
