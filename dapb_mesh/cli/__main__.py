"""`python -m dapb_mesh.cli`: the `dapb` command line."""

from dapb_mesh.cli import main

main()
