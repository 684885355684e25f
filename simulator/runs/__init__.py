"""Many simulations: scenario options, comparisons, sweeps, capacity search, process pools, result folders."""
