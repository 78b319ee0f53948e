"""nn.Modules of the LAM annotator, one component per file; builders live in `lam.build`."""
