"""Moved: collection runs in the lab, dapb_mesh/bench/collect.py. This name stays only until the command line
(dapb_mesh/cli/train.py) imports it from there; tests/test_import_direction.py tolerates this one arrow until then."""

from dapb_mesh.bench.collect import FULL_GRID, HELD_OUT, QUICK_GRID, Context, collect, grid

__all__ = ["FULL_GRID", "HELD_OUT", "QUICK_GRID", "Context", "collect", "grid"]
