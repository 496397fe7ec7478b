"""Config, mesh and sharding, state, optimizer, jitted steps, checkpoints, loop and CLIs."""
