"""The benchmark around unipeft: the paper's tasks, their offline stand-ins, their trivial baselines and the grids."""
