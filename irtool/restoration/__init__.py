"""The restore pipeline's parts that sit below the engine (what restore reads from calibrations, ...)."""
