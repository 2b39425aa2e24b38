"""Network traffic isolation for MicroStack clouds on MAAS: model, planner and host code."""
